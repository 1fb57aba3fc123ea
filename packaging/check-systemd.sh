#!/usr/bin/env bash
# Runs the installed .deb under a real systemd (run packaging/build.sh first).
# Takes no arguments.
#
# CI's machines have no systemd as PID 1, so this boots one with
# systemd-nspawn (installed from Debian when missing) on a throwaway
# copy-on-write view of this machine (an overlay over / in a private mount
# namespace, as packaging/check.sh uses) with the .deb installed and a
# private network. Inside, packaging/systemd-inside.sh starts the units and
# checks what systemd sees: Type=notify readiness, STATUS=, the watchdog,
# restart on failure, the sandbox letting the daemons work, journal fields,
# a clean stop. It writes one line per check; this script prints them and
# fails on any FAIL, or when the container never ran the checks.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -ne 0 ]; then
    echo "usage: packaging/check-systemd.sh (no arguments)" >&2
    exit 2
fi

shopt -s nullglob
debs=(target/debian/wow_*.deb)
shopt -u nullglob
if [ "${#debs[@]}" -ne 1 ]; then
    echo "FAIL: expected one .deb under target/debian/: run packaging/build.sh" >&2
    exit 1
fi

if ! command -v systemd-nspawn >/dev/null 2>&1; then
    echo "== installing systemd-container (systemd-nspawn)"
    apt-get update -qq && apt-get install -y -qq systemd-container >/dev/null
fi

base=$(mktemp -d /tmp/wow-systemd-check.XXXXXX)
trap 'rm -rf "$base"' EXIT
mkdir "$base/upper" "$base/work" "$base/root"
cp "${debs[0]}" "$base/wow.deb"
cp packaging/systemd-inside.sh "$base/inside.sh"

# In a private mount namespace: the overlay, the package, the test units,
# then the container until it powers itself off.
BASE=$base unshare --mount --propagation private bash -euo pipefail -c '
    root=$BASE/root
    mount -t overlay overlay -o "lowerdir=/,upperdir=$BASE/upper,workdir=$BASE/work" "$root"

    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    mount -t tmpfs tmpfs "$root/run"
    mount -t tmpfs tmpfs "$root/tmp"
    cp "$BASE/wow.deb" "$root/tmp/wow.deb"
    chroot "$root" dpkg --install /tmp/wow.deb </dev/null >/dev/null
    umount --lazy "$root/dev" "$root/proc" "$root/run" "$root/tmp"

    # Its own machine id, or journald refuses to keep the journal apart.
    rm -f "$root/etc/machine-id"
    systemd-machine-id-setup --root="$root" >/dev/null 2>&1
    install -m 0755 "$BASE/inside.sh" "$root/usr/local/bin/wow-systemd-inside"
    cat >"$root/etc/systemd/system/wow-systemd-check.service" <<EOF
[Unit]
Description=checks of the wow units under systemd
After=sysinit.target
[Service]
Type=oneshot
ExecStart=/usr/local/bin/wow-systemd-inside
EOF
    cat >"$root/etc/systemd/system/wow-systemd-check.target" <<EOF
[Unit]
Description=boot only what the wow checks need
Requires=wow-systemd-check.service
EOF
    timeout 300 systemd-nspawn --quiet --directory="$root" --register=no --keep-unit \
        --private-network --console=pipe --boot -- systemd.unit=wow-systemd-check.target \
        </dev/null >"$BASE/console.log" 2>&1 || echo "systemd-nspawn exited with $?"
'

results="$base/upper/root/wow-systemd-results.txt"
if [ ! -s "$results" ]; then
    echo "FAIL: the container never ran the checks; its console:" >&2
    tail -40 "$base/console.log" >&2
    exit 1
fi
cat "$results"
if grep -q '^FAIL' "$results" || ! grep -q '^done$' "$results"; then
    echo "FAIL: wow under systemd; the container's console:" >&2
    tail -40 "$base/console.log" >&2
    exit 1
fi
echo "systemd: $(grep -c '^ok' "$results") passed, 0 failed"
