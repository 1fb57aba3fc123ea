#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# that Rust does not bring, then `cargo nextest run --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
cargo nextest run --locked --workspace --no-fail-fast "$@"
# nextest does not run doctests.
cargo test --locked --doc
