#!/usr/bin/env bash
# Builds the .deb and the .rpm of wow: target/debian/wow_<version>_<arch>.deb
# and target/generate-rpm/wow-<version>-1.<arch>.rpm. Takes no arguments.
#
# Installs what it needs when missing: cargo-deb and cargo-generate-rpm
# (cargo install --locked) and rpm (apt-get, Debian), which queries the .rpm.
# The release build is the same as the Dockerfile's: cargo build --release
# --locked, then the binaries stripped.
set -euo pipefail
cd "$(dirname "$0")/.."
# The packages take the binaries from ./target, whatever the environment says.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET

if [ "$#" -ne 0 ]; then
    echo "usage: packaging/build.sh (no arguments)" >&2
    exit 2
fi

need_cargo_tool() {
    local tool=$1 crate=$2 version=$3
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "== installing $crate $version"
        cargo install --locked "$crate" --version "$version"
    fi
}
need_cargo_tool cargo-deb cargo-deb '^3.8'
need_cargo_tool cargo-generate-rpm cargo-generate-rpm '^0.21'
if ! command -v rpm >/dev/null 2>&1; then
    echo "== installing rpm"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq rpm >/dev/null
    else
        echo "error: rpm is missing; install it (apt-get install rpm) and run again" >&2
        exit 1
    fi
fi

echo "== cargo build --release --locked"
cargo build --release --locked

# Both packages take the same stripped copies; target/release keeps its
# symbols for debugging.
mkdir -p target/packaging
for binary in wow-server wow-client; do
    strip --strip-all -o "target/packaging/$binary" "target/release/$binary"
done

echo "== cargo deb"
rm -f target/debian/wow_*.deb
cargo deb --no-build --no-strip --locked --output target/debian/
echo "== cargo generate-rpm"
rm -f target/generate-rpm/wow-*.rpm
cargo generate-rpm

deb=$(ls target/debian/wow_*.deb)
rpm=$(ls target/generate-rpm/wow-*.rpm)
echo "built $deb ($(du -h "$deb" | cut -f1))"
echo "built $rpm ($(du -h "$rpm" | cut -f1))"
