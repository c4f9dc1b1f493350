# Sourced by the benchmark scripts: a temporary directory and the processes started in it
# (stopped and removed on exit), free ports, and sgw and rathole-tls set-ups on loopback.
# Expects SGW (the sgw binary) and PEERS (see ../shared/bench/peers.sh) to be set.
dir=$(mktemp -d)
chmod 755 "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# need TOOL...: stops, naming it, at the first tool this machine lacks.
need() { local t; for t in "$@"; do command -v "$t" >/dev/null || { echo "$t missing"; exit 1; }; done; }
# iperf3_server: an iperf3 server on the free port $IP, listening. Not wait_port: the server
# takes one client at a time, and a probe would be one.
iperf3_server() {
  IP=$(free_port)
  iperf3 -s -p "$IP" >/dev/null 2>&1 & pids+=($!)
  for _ in $(seq 100); do ss -ltn | grep -q ":$IP " && break; sleep 0.1; done
}
# redis_server [ARG...]: a redis server (no persistence) on the free port $RP, answering.
redis_server() {
  RP=$(free_port)
  redis-server --port "$RP" --save '' --appendonly no "$@" >/dev/null 2>&1 & pids+=($!)
  wait_port "$RP"
}

# sgw_init ARGS...: `sgw init` into $dir/sgw, the gateway on the free port $TUN, the API on a
# free port and both admin endpoints on port 0; ARGS are init's (--expose ...). Edit the files
# in $dir/sgw before sgw_start.
sgw_init() {
  TUN=$(free_port)
  "$SGW" init "$dir/sgw" --listen "127.0.0.1:$TUN" "$@" >/dev/null
  sed -i -E "s/^(api_listen *= *).*/\1\"127.0.0.1:$(free_port)\"/" "$dir/sgw/gateway.toml"
  sed -i -E 's/^(admin_listen *= *).*/\1"127.0.0.1:0"/' "$dir/sgw/client.toml" "$dir/sgw/gateway.toml"
}

# sgw_limits LINE...: a [limits] table with these lines in both programs' files.
sgw_limits() {
  printf '\n[limits]\n' | tee -a "$dir/sgw/client.toml" >>"$dir/sgw/gateway.toml"
  printf '%s\n' "$@" | tee -a "$dir/sgw/client.toml" >>"$dir/sgw/gateway.toml"
}

# sgw_start: the gateway and the client as two processes ($GW and $CL), logging warnings.
sgw_start() {
  SGW_GATEWAY_LOG_LEVEL=warn "$SGW" gateway --config "$dir/sgw/gateway.toml" 2>"$dir/gw.log" & GW=$!; pids+=($GW)
  SGW_CLIENT_LOG_LEVEL=warn "$SGW" client --config "$dir/sgw/client.toml" 2>"$dir/cl.log" & CL=$!; pids+=($CL)
}

# rathole_tls BIND:TARGET...: a rathole server and client over TLS, forwarding each BIND port
# to its TARGET port. Fails (starts nothing) when $PEERS has no rathole. RATHOLE_PORT sets the
# server's port, RATHOLE_REMOTE the port the client dials for it (a delay proxy in between).
rathole_tls() {
  local rh=$PEERS/rathole/bin/rathole rt i=0 p
  [ -x "$rh" ] || return 1
  (cd "$dir" && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1 &&
    openssl pkcs12 -export -out id.pfx -inkey key.pem -in cert.pem -passout pass:1234 >/dev/null 2>&1)
  rt=${RATHOLE_PORT:-$(free_port)}
  printf '[server]\nbind_addr = "127.0.0.1:%s"\n[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "%s/id.pfx"\npkcs12_password = "1234"\n' \
    "$rt" "$dir" >"$dir/rs.toml"
  printf '[client]\nremote_addr = "localhost:%s"\n[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "%s/cert.pem"\nhostname = "localhost"\n' \
    "${RATHOLE_REMOTE:-$rt}" "$dir" >"$dir/rc.toml"
  for p in "$@"; do
    i=$((i + 1))
    printf '[server.services.s%d]\ntoken = "t"\nbind_addr = "127.0.0.1:%s"\n' $i "${p%%:*}" >>"$dir/rs.toml"
    printf '[client.services.s%d]\ntoken = "t"\nlocal_addr = "127.0.0.1:%s"\n' $i "${p#*:}" >>"$dir/rc.toml"
  done
  "$rh" -s "$dir/rs.toml" >/dev/null 2>&1 & pids+=($!)
  "$rh" -c "$dir/rc.toml" >/dev/null 2>&1 & pids+=($!)
}

# pg_start [POSTGRES-ARGS...]: a fresh PostgreSQL (Debian's package) in $dir/pg on the free
# port $PG, trusting local connections, run as the postgres user when we are root; $BIN is its
# bin directory and as_pg runs a command as that user. Exits when PostgreSQL is missing.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_start() {
  BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1)
  [ -x "$BIN/initdb" ] || { echo "PostgreSQL server missing (apt-get install postgresql)"; exit 1; }
  PG=$(free_port)
  mkdir "$dir/pg"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/pg"; fi
  as_pg "$BIN/initdb" -A trust -U postgres -D "$dir/pg/data" >/dev/null
  as_pg "$BIN/postgres" -D "$dir/pg/data" -c listen_addresses=127.0.0.1 -p "$PG" -k "$dir/pg" \
    "$@" >"$dir/pg.log" 2>&1 & pids+=($!)
  wait_port "$PG"
  for _ in $(seq 50); do "$BIN/pg_isready" -h 127.0.0.1 -p "$PG" >/dev/null 2>&1 && break; sleep 0.1; done
}
