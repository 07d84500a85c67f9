#!/usr/bin/env bash
# Cache benchmark: cache-hit requests/s beside cache-miss requests/s, same run, same machine.
# Not a test. Usage: benches/cache.sh [seconds-per-scenario]   (default 10)
#
# Starts `cliniko-gateway demo` (a release build: the TLS Cliniko stand-in + the gateway) on
# loopback, then drives it with wrk (installed from Debian if missing), pinned so the load
# generator and the servers do not share a core:
#   hit:  GET /v1/practitioners              -> served from memory (X-Cache: HIT)
#   miss: GET /v1/practitioners?miss=<n>, n unique per request -> every request a real miss:
#         upstream fetch over TLS + store (no single-flight sharing between callers)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
port=${PORT:-18181}

if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --quiet
bin=target/release/cliniko-gateway

out=$(mktemp)
taskset -c 0 "$bin" demo --listen "127.0.0.1:$port" >"$out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 100); do grep -q "export TOKEN=" "$out" && break; sleep 0.1; done
token=$(sed -n 's/.*export TOKEN=//p' "$out")
[ -n "$token" ] || { echo "demo did not start:"; cat "$out"; exit 1; }
url="http://127.0.0.1:$port/v1/practitioners"

unique=$(mktemp --suffix=.lua)
cat >"$unique" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/practitioners?miss=" .. counter)
end
LUA
trap 'kill $pid 2>/dev/null || true; rm -f "$out" "$unique"' EXIT

run() { # name, extra wrk args
  taskset -c 1 wrk -t1 -c32 -d2s -H "Authorization: Bearer $token" $2 "$url" >/dev/null
  taskset -c 1 wrk -t1 -c32 -d"${secs}s" --latency -H "Authorization: Bearer $token" $2 "$url" \
    | awk -v n="$1" '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%-6s %12s %10s %10s\n", n, rps, p50, p99}'
}

printf "%-6s %12s %10s %10s\n" scenario "requests/s" p50 p99
hit=$(run hit "")
miss=$(run miss "-s $unique")
echo "$hit"; echo "$miss"
h=$(echo "$hit" | awk '{print $2}'); m=$(echo "$miss" | awk '{print $2}')
awk -v h="$h" -v m="$m" 'BEGIN { printf "hit/miss ratio: %.1fx\n", h/m }'
echo "($(date -u +%F) $(nproc) cores; wrk -t1 -c32 on core 1, gateway + stand-in on core 0, ${secs}s each after 2s warm-up)"
