#!/usr/bin/env bash
# Brings up a whole tunnel on this machine: wow-server, a local echo app and
# wow-client, all on 127.0.0.1. Prints the webhook URL, sends one webhook
# through it, and keeps running until Ctrl-C.
#
#   scripts/demo.sh                      # server on :8080, echo app on :3000
#   DEMO_SERVER_PORT=9090 DEMO_APP_PORT=4000 scripts/demo.sh
set -euo pipefail

cd "$(dirname "$0")/.."
server_port=${DEMO_SERVER_PORT:-8080}
app_port=${DEMO_APP_PORT:-3000}
work=target/demo
mkdir -p "$work"

# The debug build: a few minutes on a fresh clone, and shared with the test
# suite's (the release profile's fat LTO is for packages and benchmarks).
echo "building wow (debug; the first build takes a few minutes) ..." >&2
cargo build --locked --bin wow-server --bin wow-client >&2
bin=${CARGO_TARGET_DIR:-target}/debug

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/wow-server" --listen "127.0.0.1:$server_port" --state-dir "$work/server" \
    --config-dir "$work/no-system-config" 2>"$work/server.log" &
pids+=($!)
"$bin/wow-client" echo --listen "127.0.0.1:$app_port" 2>"$work/echo.log" &
pids+=($!)

# Wait until both listen (the server logs "listening", the app "echo app listening").
for _ in $(seq 1 100); do
    if grep -q listening "$work/server.log" && grep -q listening "$work/echo.log"; then break; fi
    sleep 0.1
done
if ! grep -q listening "$work/server.log"; then
    echo "wow-server did not start:" >&2; cat "$work/server.log" >&2; exit 1
fi
if ! grep -q listening "$work/echo.log"; then
    echo "the echo app did not start:" >&2; cat "$work/echo.log" >&2; exit 1
fi

# The client prints "default  <webhook URL> -> <target>" once attached.
coproc CLIENT { exec "$bin/wow-client" --server-url "http://127.0.0.1:$server_port" \
    --target-url "http://127.0.0.1:$app_port/app" --state-dir "$work/client" \
    --config-dir "$work/no-system-config" 2>"$work/client.log"; }
pids+=($CLIENT_PID)
if ! read -r -t 30 -u "${CLIENT[0]}" line; then
    echo "wow-client did not attach:" >&2; cat "$work/client.log" >&2; exit 1
fi
url=$(awk '{print $2}' <<<"$line")

cat <<MSG

  tunnel up: $line

  Send a webhook through it:
    curl -X POST '$url/github?ref=main' -H 'Content-Type: application/json' -d '{"zen":"Keep it logically awesome."}'

  Logs: $work/{server,client,echo}.log. Ctrl-C stops everything.

MSG
curl -sS -X POST "$url/github?ref=main" -H 'Content-Type: application/json' \
    -d '{"zen":"Keep it logically awesome."}'
echo
# Delivery lines from the client, as they happen. In the background, so that
# `wait` (unlike a foreground command) lets SIGTERM reach the cleanup trap.
# (A coproc's own descriptors are closed in subshells: hand cat a copy.)
exec {lines}<&"${CLIENT[0]}"
cat <&"$lines" &
pids+=($!)
wait $!
