#!/usr/bin/env bash
# Installs what the tunnel benchmark drives besides wow, when missing:
# wrk (the load) and nginx (the app) from Debian, bore (the raw TCP tunnel
# compared with) from crates.io. The benchmark runs this itself when a tool
# is missing; CI runs it first.
set -euo pipefail

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    # The benchmark starts its own nginx on 127.0.0.1; it needs none running.
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v bore >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/bore" ]; then
    cargo install --locked bore-cli --version 0.6.0
fi
