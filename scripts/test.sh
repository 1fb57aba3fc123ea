#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# that Rust does not bring, then `cargo nextest run --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The cluster tests put nginx (Debian's package) in front of the replicas as
# a plain round-robin balancer; each test runs its own nginx on a loopback
# port. The package's own service is kept from starting (policy-rc.d 101).
have_nginx() {
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]
}
if ! have_nginx; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        fi
        echo "== installing nginx for the cluster tests (apt-get install -y nginx)"
        added_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
            $sudo chmod 755 /usr/sbin/policy-rc.d
            added_policy=yes
        fi
        if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nginx; then
            $sudo apt-get update
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends nginx
        fi
        if [ -n "$added_policy" ]; then
            $sudo rm -f /usr/sbin/policy-rc.d
        fi
    else
        echo "warning: nginx is missing and apt-get is not available to install it:" >&2
        echo "warning: the nginx test (tests/cluster_nginx.rs) will fail; install nginx and run again" >&2
    fi
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo nextest run --locked --workspace --no-fail-fast "$@"
# nextest does not run doctests.
cargo test --locked --doc
