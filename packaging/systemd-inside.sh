#!/bin/bash
# Inside the container of packaging/check-systemd.sh, with systemd as PID 1
# and the .deb installed: starts the wow units and writes one line per check
# to /root/wow-systemd-results.txt ("ok: …" or "FAIL: …"), then "done", then
# powers the container off.
set -u
out=/root/wow-systemd-results.txt
: >"$out"

# check DESCRIPTION COMMAND...
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then
        echo "ok: $what" >>"$out"
    else
        echo "FAIL: $what" >>"$out"
    fi
}

# prop UNIT PROPERTY: what systemd knows of the unit.
prop() {
    systemctl show --value --property "$2" "$1"
}

# is UNIT PROPERTY VALUE
is() {
    [ "$(prop "$1" "$2")" = "$3" ]
}

# within SECONDS COMMAND...: polls a state systemd reports until it holds.
within() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

status_has() {
    prop "$1" StatusText | grep -q -- "$2"
}

healthz() {
    python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8080/healthz", timeout=5)'
}

journal_has() {
    [ -n "$(journalctl --no-pager --output=cat "$@")" ]
}

# A short watchdog, so that missed pings would show within seconds. Until the
# configuration loader reads /etc/wow/client.toml, the client's relay and
# target come as flags (the shipped unit passes --profile %i alone).
mkdir -p /etc/systemd/system/wow-server.service.d /etc/systemd/system/wow-client@.service.d
printf '[Service]\nWatchdogSec=2s\n' >/etc/systemd/system/wow-server.service.d/check.conf
cat >/etc/systemd/system/wow-client@.service.d/check.conf <<'EOF'
[Service]
WatchdogSec=2s
ExecStartPre=
ExecStartPre=/usr/bin/wow-client --check-config --server-url http://127.0.0.1:8080 --target-url http://127.0.0.1:9/app
ExecStart=
ExecStart=/usr/bin/wow-client --server-url http://127.0.0.1:8080 --target-url http://127.0.0.1:9/app
EOF
systemctl daemon-reload

# The client first: ready with a valid configuration, relay or not.
check "wow-client@check starts (READY=1) while its relay is unreachable" \
    systemctl start wow-client@check
check "wow-client@check says STATUS=default: reconnecting" \
    within 15 status_has wow-client@check "default: reconnecting"

check "wow-server starts (READY=1 once listening)" systemctl start wow-server
check "wow-server is Type=notify" is wow-server Type notify
check "wow-server is active" is wow-server ActiveState active
check "wow-server answers /healthz from its sandbox" healthz
check "wow-client@check attaches (STATUS=default: attached)" \
    within 30 status_has wow-client@check "default: attached"
check "wow-server says STATUS=1 channel, 1 attached" \
    within 10 status_has wow-server "1 channel, 1 attached"

# Pings every second or the watchdog (2s) kills them: after 6s, same pids.
server_pid=$(prop wow-server MainPID)
client_pid=$(prop wow-client@check MainPID)
sleep 6
check "watchdog pings reach systemd (wow-server not restarted after 3 timeouts)" \
    is wow-server NRestarts 0
check "watchdog pings reach systemd (wow-client@check not restarted)" \
    is wow-client@check NRestarts 0
check "wow-server kept its pid" is wow-server MainPID "$server_pid"
check "wow-client@check kept its pid" is wow-client@check MainPID "$client_pid"

check "state dir /var/lib/wow is wow's, mode 700" \
    test "$(stat -c '%U:%G %a' /var/lib/wow)" = "wow:wow 700"
check "state dir /var/lib/wow-client is wow's, mode 700" \
    test "$(stat -c '%U:%G %a' /var/lib/wow-client)" = "wow:wow 700"
check "the journal has wow-server's entries, fields and all (WOW_ADDRESS)" \
    journal_has -u wow-server SYSLOG_IDENTIFIER=wow-server MESSAGE=listening WOW_ADDRESS=0.0.0.0:8080
check "the journal has the client's profile and channel (WOW_PROFILE, WOW_CHANNEL)" \
    journal_has -u wow-client@check WOW_PROFILE=default MESSAGE=attached

# Restart=on-failure: a killed relay comes back, and the client re-attaches.
systemctl kill --signal=KILL wow-server
check "wow-server restarts after SIGKILL (Restart=on-failure)" \
    within 20 is wow-server NRestarts 1
check "wow-server is active again" within 20 is wow-server ActiveState active
check "wow-client@check re-attaches" \
    within 30 status_has wow-client@check "default: attached"

check "systemctl stop wow-client@check drains and exits 0" systemctl stop wow-client@check
check "wow-client@check ended cleanly" is wow-client@check Result success
check "systemctl stop wow-server drains and exits 0" systemctl stop wow-server
check "wow-server ended cleanly" is wow-server Result success
check "wow-server logged its stop" journal_has -u wow-server MESSAGE=stopped

for unit in wow-server.service wow-client.service wow-client@check.service; do
    score=$(systemd-analyze security "$unit" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    check "systemd-analyze security $unit (running system): exposure $score" \
        systemd-analyze security --threshold=40 "$unit"
done

echo done >>"$out"
systemctl --no-block poweroff
