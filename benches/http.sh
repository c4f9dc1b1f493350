#!/usr/bin/env bash
# HTTP requests/s with wrk (keep-alive): nginx direct, through a TCP destination (bytes
# relayed), and through an HTTP destination (every request parsed and judged by the ACL).
#
#   cargo build --release && bash benches/http.sh          # SECS=5 CONNS=50
set -euo pipefail
cd "$(dirname "$0")/.."
SGW=${SGW_BIN:-target/release/sgw}
SECS=${SECS:-5}
CONNS=${CONNS:-50}
for t in wrk nginx; do
  command -v $t >/dev/null || [ -x /usr/sbin/$t ] || { echo "$t missing (apt-get install $t)"; exit 1; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
web=$(free_port); tcp=$(free_port); http=$(free_port); tun=$(free_port); admin=$(free_port)

cat >"$dir/nginx.conf" <<EOF
daemon off; master_process off; pid $dir/nginx.pid; error_log $dir/nginx.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000;
  client_body_temp_path $dir/t1; proxy_temp_path $dir/t2; fastcgi_temp_path $dir/t3;
  uwsgi_temp_path $dir/t4; scgi_temp_path $dir/t5;
  server { listen 127.0.0.1:$web; location / { return 200 "hello from nginx\n"; } } }
EOF
"$NGINX" -c "$dir/nginx.conf" -p "$dir" -e "$dir/nginx.err" & pids+=($!)
"$SGW" init "$dir/conf" --listen "127.0.0.1:$tun" --expose "127.0.0.1:$web@$tcp" --expose "127.0.0.1:$web@$http" >/dev/null
# The second destination speaks HTTP.
python3 - "$dir/conf/gateway.toml" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
i = s.index('id = "dest2"')
s = s[:i] + s[i:].replace('protocol = "TCP"', 'protocol = "HTTP"', 1)
open(p, "w").write(s)
PY
SGW_GATEWAY_LOG_LEVEL=warn "$SGW" gateway --config "$dir/conf/gateway.toml" 2>"$dir/gw.log" & pids+=($!)
SGW_CLIENT_LOG_LEVEL=warn SGW_CLIENT_ADMIN_LISTEN="127.0.0.1:$admin" "$SGW" client --config "$dir/conf/client.toml" 2>"$dir/client.log" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$http/" >/dev/null || { cat "$dir/client.log" "$dir/gw.log"; exit 1; }

run() {
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://127.0.0.1:$2/" | awk -v n="$1" '
    /Requests\/sec/ {rps=$2} / 99%/ {p99=$2} /Non-2xx/ {bad=$NF}
    END {printf "%-10s %10.0f req/s   p99 %s%s\n", n, rps, p99, (bad ? "   non-2xx " bad : "")}'
}
echo "wrk -t2 -c$CONNS -d${SECS}s (keep-alive), GET / -> 17-byte body"
run direct "$web"
run sgw-tcp "$tcp"
run sgw-http "$http"
