# syntax=docker/dockerfile:1
# wow-server in a small image that runs as an unprivileged user.
#
#   docker build -t wow-server .
#   docker run -d -p 8080:8080 -v wow-state:/var/lib/wow --stop-timeout 30 \
#       wow-server --public-url https://hooks.example.com
#
# The build step is CI's (packaging/build.sh): cargo build --release --locked,
# then the binary stripped. State (channels, tokens, the signing key) lives in
# the volume /var/lib/wow; configuration comes from flags, WOW_* variables or
# files mounted under /etc/wow.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && strip --strip-all -o /wow-server target/release/wow-server

FROM debian:bookworm-slim
# ca-certificates: the system trust store, for GitHub in auth mode.
# busybox: its wget is the health check (about 1 MiB, no curl and its libraries).
# Versions are left to bookworm's point and security updates (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates busybox \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/wow \
        --no-create-home --shell /usr/sbin/nologin wow \
    && install -d -o wow -g wow -m 0700 /var/lib/wow \
    && install -d -m 0755 /etc/wow
COPY --from=build /wow-server /usr/bin/wow-server
USER 10001:10001
VOLUME ["/var/lib/wow"]
# 8080: webhooks, WebSockets, /healthz. 7946: cluster gossip (only when
# cluster.peers or cluster.peer_domain is set).
EXPOSE 8080 7946
# The check asks the default port; one who moves it with --port or --listen
# passes docker run --health-cmd with the new one.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/bin/wow-server"]
