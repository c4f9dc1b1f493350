# sgw in a container: `docker build -t sgw .`, then run the client beside legacy apps:
#   docker run -v /srv/sgw:/etc/sgw:ro sgw            (client.toml, acl.list, ca.pem, token)
#   docker run -v /srv/sgw:/etc/sgw sgw gateway        (gateway.toml, certs, token)
# Settings: the config files, or SGW_CLIENT_* / SGW_GATEWAY_* env vars for the command-line
# options (SGW_CLIENT_CONFIG, SGW_CLIENT_ACL, SGW_CLIENT_LOG_LEVEL, SGW_CLIENT_LOG_FORMAT, ...);
# secrets as *_file paths to mounted files. Logs go to stdout/stderr (JSON by default here).
# The ACL directory must be writable by uid 10001 for `sgw acl add|remove` write-back.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
# The allocator settings the binary is built with.
COPY .cargo .cargo
# The same command and profile as a local `cargo build --release`.
RUN cargo build --release --locked --bin sgw && strip target/release/sgw

FROM debian:bookworm-slim
# ca-certificates unpinned on purpose: the image should take the distribution's current roots.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sgw \
 && mkdir -p /etc/sgw && chown sgw:sgw /etc/sgw
COPY --from=build /src/target/release/sgw /usr/local/bin/sgw
USER 10001:10001
ENV SGW_CLIENT_CONFIG=/etc/sgw/client.toml \
    SGW_GATEWAY_CONFIG=/etc/sgw/gateway.toml \
    SGW_CLIENT_LOG_FORMAT=json \
    SGW_GATEWAY_LOG_FORMAT=json
VOLUME ["/etc/sgw"]
# The admin endpoint (admin_listen, loopback by default) answers /healthz; set SGW_ADMIN if
# admin_listen is elsewhere.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["sgw", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sgw"]
CMD ["client"]
