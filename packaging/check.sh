#!/usr/bin/env bash
# Checks what packaging/build.sh built (run that first). Takes no arguments.
#
#  1. Layout: every file of the .deb and the .rpm with its mode and owner,
#     the config files (deb conffiles, rpm %config(noreplace)), the
#     maintainer scripts (syntax, and that none starts or enables a unit).
#  2. The .deb installed, upgraded, removed and purged, and the .rpm
#     installed, upgraded and erased, each in a throwaway copy-on-write view
#     of this machine (an overlay over / in a private mount namespace,
#     entered with chroot): the machine itself is never changed. There, the
#     installed binaries run, and systemd-analyze verifies the installed
#     units against them and scores each unit's exposure (4.0 at most).
#
# Needs root (mount namespaces, overlayfs, chroot), rpm and systemd-analyze.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -ne 0 ]; then
    echo "usage: packaging/check.sh (no arguments)" >&2
    exit 2
fi

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
# Each check that passed is a line in $PASSED, counted at the end.
pass() {
    echo "ok: $*"
    echo "$*" >>"$PASSED"
}

shopt -s nullglob
debs=(target/debian/wow_*.deb)
rpms=(target/generate-rpm/wow-*.rpm)
[ "${#debs[@]}" -eq 1 ] || fail "expected one .deb under target/debian/: run packaging/build.sh"
[ "${#rpms[@]}" -eq 1 ] || fail "expected one .rpm under target/generate-rpm/: run packaging/build.sh"
shopt -u nullglob
work=$(mktemp -d /tmp/wow-package-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
export PASSED="$work/passed"
DEB="$work/$(basename "${debs[0]}")"
RPM="$work/$(basename "${rpms[0]}")"
cp "${debs[0]}" "$DEB"
cp "${rpms[0]}" "$RPM"
DEB_VERSION=$(dpkg-deb --field "$DEB" Version)
VERSION=${DEB_VERSION%-*}
UNITS=(wow-server.service wow-client.service wow-client@.service)
export DEB RPM VERSION

echo "== layout of $(basename "$DEB") ($(du -h "$DEB" | cut -f1))"
# mode owner path, for every file that is not a folder
dpkg-deb --contents "$DEB" |
    awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $1, $2, $6 }' | sort -k3 >"$work/deb.files"
cat >"$work/deb.expected" <<'EOF'
-rw-r----- 0/0 /etc/wow/client.toml
-rw-r----- 0/0 /etc/wow/server.toml
-rwxr-xr-x 0/0 /usr/bin/wow-client
-rwxr-xr-x 0/0 /usr/bin/wow-server
-rw-r--r-- 0/0 /usr/lib/systemd/system/wow-client.service
-rw-r--r-- 0/0 /usr/lib/systemd/system/wow-client@.service
-rw-r--r-- 0/0 /usr/lib/systemd/system/wow-server.service
-rw-r--r-- 0/0 /usr/share/doc/wow/LICENSE
-rw-r--r-- 0/0 /usr/share/doc/wow/README.md
-rw-r--r-- 0/0 /usr/share/doc/wow/copyright
EOF
diff -u "$work/deb.expected" "$work/deb.files" || fail "the .deb holds other files than expected"
pass "files, modes and owners"
printf '/etc/wow/client.toml\n/etc/wow/server.toml\n' >"$work/conffiles.expected"
dpkg-deb --info "$DEB" conffiles | sort >"$work/conffiles"
diff -u "$work/conffiles.expected" "$work/conffiles" || fail "conffiles differ"
pass "conffiles: $(tr '\n' ' ' <"$work/conffiles")"
for unit in "${UNITS[@]}"; do
    dpkg-deb --fsys-tarfile "$DEB" | tar -xO "./usr/lib/systemd/system/$unit" |
        cmp -s - "systemd/$unit" || fail "$unit in the .deb is not systemd/$unit"
done
pass "units are systemd/*.service"
dpkg-deb --control "$DEB" "$work/control"
for script in postinst prerm postrm; do
    [ -x "$work/control/$script" ] || fail "no executable $script"
    sh -n "$work/control/$script" || fail "$script: syntax error"
    # A unit may be re-enabled if the admin had it enabled, and restarted
    # on upgrade if it ran; never started or enabled otherwise.
    if grep -v '^ *#' "$work/control/$script" |
        grep -E '(systemctl|deb-systemd-invoke)( +--[a-z]+)* +(start|enable|restart|reload)\b'; then
        fail "$script starts or enables a unit"
    fi
done
pass "maintainer scripts: postinst prerm postrm, none starts anything"

echo "== layout of $(basename "$RPM") ($(du -h "$RPM" | cut -f1))"
# path mode owner flags (c: config, n: noreplace, d: doc)
rpm -qp --qf '[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}\n]' \
    "$RPM" | sed 's/ *$//' | sort >"$work/rpm.files"
cat >"$work/rpm.expected" <<'EOF'
/etc/wow/client.toml -rw-r----- root:wow cn
/etc/wow/server.toml -rw-r----- root:wow cn
/usr/bin/wow-client -rwxr-xr-x root:root
/usr/bin/wow-server -rwxr-xr-x root:root
/usr/lib/systemd/system/wow-client.service -rw-r--r-- root:root
/usr/lib/systemd/system/wow-client@.service -rw-r--r-- root:root
/usr/lib/systemd/system/wow-server.service -rw-r--r-- root:root
/usr/share/doc/wow/LICENSE -rw-r--r-- root:root d
/usr/share/doc/wow/README.md -rw-r--r-- root:root d
EOF
diff -u "$work/rpm.expected" "$work/rpm.files" || fail "the .rpm holds other files than expected"
pass "files, modes, owners; configs are %config(noreplace) (flags cn)"
rpm -qp --scripts "$RPM" >"$work/rpm.scripts"
for scriptlet in preinstall postinstall preuninstall postuninstall; do
    grep -q "^$scriptlet scriptlet" "$work/rpm.scripts" || fail "no %$scriptlet scriptlet"
done
for script in packaging/rpm/*.sh; do
    sh -n "$script" || fail "$script: syntax error"
done
if grep -v '^ *#' "$work/rpm.scripts" |
    grep -E 'systemctl( +--[a-z]+)* +(start|enable|restart|reload)\b'; then
    fail "an rpm scriptlet starts or enables a unit"
fi
pass "scriptlets: pre post preun postun, none starts anything"

# The upgrades: the same packages with the next revision. (cargo deb would
# delete the .deb under target/debian/ when building another version.)
mkdir "$work/upgrade"
dpkg-deb --raw-extract "$DEB" "$work/upgrade/deb"
sed -i "s/^Version: .*/Version: $VERSION-2/" "$work/upgrade/deb/DEBIAN/control"
dpkg-deb --root-owner-group --build "$work/upgrade/deb" "$work/upgrade/wow.deb" >/dev/null
cargo generate-rpm --set-metadata 'release = "2"' --output "$work/upgrade/wow.rpm" >/dev/null
export DEB_UPGRADE="$work/upgrade/wow.deb" RPM_UPGRADE="$work/upgrade/wow.rpm"

# ------------------------------------------------------------ in an overlay
# Each function below runs in a private mount namespace where $ROOT is an
# overlay over / whose changes go to a temp dir (see in_overlay).

in_root() {
    chroot "$ROOT" "$@"
}

mount_overlay() {
    mount -t overlay overlay -o "lowerdir=/,upperdir=$BASE/upper,workdir=$BASE/work" "$ROOT"
    mount --rbind /dev "$ROOT/dev"
    mount -t proc proc "$ROOT/proc"
    # A /run without systemd in it: the scripts must cope, as in a container.
    mount -t tmpfs tmpfs "$ROOT/run"
    mount -t tmpfs tmpfs "$ROOT/tmp"
}

# The installed units against the installed binaries.
check_units() {
    local output unit score
    if ! output=$(systemd-analyze verify --root="$ROOT" \
        wow-server.service wow-client.service wow-client@stripe.service 2>&1) ||
        [ -n "$output" ]; then
        fail "systemd-analyze verify: $output"
    fi
    pass "systemd-analyze verify: wow-server, wow-client, wow-client@stripe"
    for unit in wow-server.service wow-client.service wow-client@.service; do
        if ! output=$(systemd-analyze security --offline=true --threshold=40 \
            "$ROOT/usr/lib/systemd/system/$unit" 2>&1); then
            echo "$output" >&2
            fail "$unit: exposure above 4.0"
        fi
        score=$(echo "$output" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        pass "systemd-analyze security --offline=true $unit: exposure $score"
    done
}

status_of() {
    in_root dpkg-query --show --showformat '${Status}' wow 2>/dev/null || true
}

deb_lifecycle() {
    cp "$DEB" "$ROOT/tmp/wow.deb"
    cp "$DEB_UPGRADE" "$ROOT/tmp/wow-upgrade.deb"

    in_root dpkg --install /tmp/wow.deb </dev/null
    [ "$(status_of)" = "install ok installed" ] || fail "dpkg status: $(status_of)"
    in_root getent passwd wow | grep -q ':/var/lib/wow:/usr/sbin/nologin$' ||
        fail "no wow system user: $(in_root getent passwd wow)"
    [ "$(in_root id -u wow)" -lt 1000 ] || fail "wow is not a system user"
    for file in server client; do
        [ "$(in_root stat -c '%U:%G %a' "/etc/wow/$file.toml")" = "root:wow 640" ] ||
            fail "/etc/wow/$file.toml: $(in_root stat -c '%U:%G %a' "/etc/wow/$file.toml")"
    done
    [ "$(in_root /usr/bin/wow-server --version)" = "wow-server $VERSION" ] ||
        fail "installed wow-server --version: $(in_root /usr/bin/wow-server --version)"
    [ "$(in_root /usr/bin/wow-client --version)" = "wow-client $VERSION" ] ||
        fail "installed wow-client --version"
    in_root setpriv --reuid=wow --regid=wow --init-groups \
        /usr/bin/wow-server --check-config || fail "wow-server --check-config as wow"
    if compgen -G "$ROOT/etc/systemd/system/*.wants/wow-*" >/dev/null; then
        fail "installing enabled a unit"
    fi
    pass "dpkg -i: user wow, configs root:wow 640, wow-server $VERSION runs, nothing enabled"
    check_units

    # An admin's edit survives an upgrade; the state survives removal.
    echo '# edited by the admin' >>"$ROOT/etc/wow/server.toml"
    in_root dpkg --install /tmp/wow-upgrade.deb </dev/null
    [ "$(in_root dpkg-query --show --showformat '${Version}' wow)" = "$VERSION-2" ] ||
        fail "upgrade did not install $VERSION-2"
    grep -q '^# edited by the admin$' "$ROOT/etc/wow/server.toml" ||
        fail "the upgrade overwrote /etc/wow/server.toml"
    [ "$(in_root stat -c '%U:%G %a' /etc/wow/server.toml)" = "root:wow 640" ] ||
        fail "the upgrade changed the config's permissions"
    pass "upgrade to $VERSION-2 keeps the edited /etc/wow/server.toml"

    mkdir -p "$ROOT/var/lib/wow" "$ROOT/var/lib/wow-client"
    touch "$ROOT/var/lib/wow/channels" "$ROOT/var/lib/wow-client/channels"
    in_root dpkg --remove wow </dev/null
    [ "$(status_of)" = "deinstall ok config-files" ] || fail "after remove: $(status_of)"
    [ ! -e "$ROOT/usr/bin/wow-server" ] || fail "remove left /usr/bin/wow-server"
    [ ! -e "$ROOT/usr/lib/systemd/system/wow-server.service" ] || fail "remove left a unit"
    grep -q '^# edited by the admin$' "$ROOT/etc/wow/server.toml" || fail "remove lost the config"
    [ -e "$ROOT/var/lib/wow/channels" ] || fail "remove deleted the state"
    pass "dpkg -r: binaries and units gone, configs and state kept"

    in_root dpkg --purge wow </dev/null
    case "$(status_of)" in
        "" | "unknown ok not-installed") ;;
        *) fail "after purge: $(status_of)" ;;
    esac
    [ ! -e "$ROOT/etc/wow/server.toml" ] || fail "purge left /etc/wow/server.toml"
    [ ! -e "$ROOT/etc/wow/client.toml" ] || fail "purge left /etc/wow/client.toml"
    [ ! -e "$ROOT/var/lib/wow" ] && [ ! -e "$ROOT/var/lib/wow-client" ] ||
        fail "purge left the state"
    if in_root dpkg-statoverride --list /etc/wow/server.toml >/dev/null; then
        fail "purge left the stat override"
    fi
    in_root getent passwd wow >/dev/null || fail "purge removed the wow user"
    pass "dpkg -P: configs, state and stat overrides gone; the wow user stays"
}

rpm_in_root() {
    in_root rpm --dbpath /var/lib/rpm --force-debian "$@"
}

rpm_lifecycle() {
    cp "$RPM" "$ROOT/tmp/wow.rpm"
    cp "$RPM_UPGRADE" "$ROOT/tmp/wow-upgrade.rpm"
    in_root rpm --dbpath /var/lib/rpm --initdb

    # --nodeps: this view is Debian, whose libc no rpm database records.
    rpm_in_root --install --nodeps /tmp/wow.rpm
    in_root getent passwd wow >/dev/null || fail "%pre created no wow user"
    for file in server client; do
        [ "$(in_root stat -c '%U:%G %a' "/etc/wow/$file.toml")" = "root:wow 640" ] ||
            fail "/etc/wow/$file.toml: $(in_root stat -c '%U:%G %a' "/etc/wow/$file.toml")"
    done
    [ "$(in_root /usr/bin/wow-server --version)" = "wow-server $VERSION" ] ||
        fail "installed wow-server --version"
    pass "rpm -i: user wow, configs root:wow 640, wow-server $VERSION runs"

    echo '# edited by the admin' >>"$ROOT/etc/wow/server.toml"
    rpm_in_root --upgrade --nodeps /tmp/wow-upgrade.rpm
    [ "$(rpm_in_root -q --qf '%{RELEASE}' wow)" = "2" ] || fail "upgrade did not install release 2"
    grep -q '^# edited by the admin$' "$ROOT/etc/wow/server.toml" ||
        fail "the upgrade overwrote /etc/wow/server.toml"
    pass "rpm -U to release 2 keeps the edited /etc/wow/server.toml"

    rpm_in_root --erase wow 2>/dev/null
    [ ! -e "$ROOT/usr/bin/wow-server" ] || fail "erase left /usr/bin/wow-server"
    [ -e "$ROOT/etc/wow/server.toml.rpmsave" ] || fail "erase lost the edited config"
    [ ! -e "$ROOT/etc/wow/client.toml" ] || fail "erase left the unedited client.toml"
    pass "rpm -e: binaries gone, the edited config kept as server.toml.rpmsave"
}

# Runs function $1 in a fresh overlay (see above), then throws it away.
in_overlay() {
    local base status=0
    base=$(mktemp -d /tmp/wow-package-root.XXXXXX)
    mkdir "$base/upper" "$base/work" "$base/root"
    BASE=$base ROOT=$base/root unshare --mount --propagation private \
        bash -c "set -euo pipefail; mount_overlay; $1" || status=$?
    rm -rf "$base"
    return "$status"
}

export -f fail pass in_root mount_overlay check_units status_of deb_lifecycle \
    rpm_in_root rpm_lifecycle

echo "== install, upgrade, remove, purge of the .deb"
in_overlay deb_lifecycle
echo "== install, upgrade, erase of the .rpm"
in_overlay rpm_lifecycle
echo "packages checked: $(basename "$DEB") $(du -h "$DEB" | cut -f1), $(basename "$RPM") $(du -h "$RPM" | cut -f1)"
echo "packages: $(wc -l <"$PASSED") passed, 0 failed"
