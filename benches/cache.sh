#!/usr/bin/env bash
# Cache benchmark: cache-hit requests/s beside cache-miss requests/s, same run, same machine.
# Not a test. Usage: benches/cache.sh [seconds-per-scenario]   (default 10)
#
# Same set-up as compare.sh (benches/lib.sh: a TLS upstream and a release gateway on core 0,
# wrk on core 1), every request with a verified JWT:
#   hit:  GET /v1/practitioners                 -> served from memory (X-Cache: HIT)
#   miss: GET /v1/practitioners?miss=<n>, n unique per request -> every request a real miss:
#         upstream fetch over TLS, link rewrite, store (no single-flight sharing)
# Failed responses (e.g. 429s) are reported, never counted silently.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
UP=${UP_PORT:-19643} GW=${GW_PORT:-19290}
source "$(dirname "$0")/lib.sh"

gw_config "$GW" 10000 >"$w/gw.toml"
add_bench_key "$w/gw.toml"
taskset -c 0 "$bin" serve --config "$w/gw.toml" >"$w/gw.log" 2>&1 &
pids+=($!)
wait_ports "$UP" "$GW"
token=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)
url="http://127.0.0.1:$GW/v1/practitioners"

run() { # name, extra wrk args
  taskset -c 1 wrk -t1 -c32 -d2s -H "Authorization: Bearer $token" $2 "$url" >/dev/null
  local out; out=$(taskset -c 1 wrk -t1 -c32 -d"${secs}s" --latency -H "Authorization: Bearer $token" $2 "$url")
  if grep -q "Non-2xx" <<<"$out"; then echo "WARNING: $1 had failed responses: $(grep Non-2xx <<<"$out")" >&2; fi
  awk -v n="$1" '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {printf "%-6s %12s %10s %10s\n", n, rps, p50, p99}' <<<"$out"
}

printf "%-6s %12s %10s %10s\n" scenario "requests/s" p50 p99
hit=$(run hit "")
miss=$(run miss "-s $w/unique.lua")
echo "$hit"; echo "$miss"
h=$(echo "$hit" | awk '{print $2}'); m=$(echo "$miss" | awk '{print $2}')
awk -v h="$h" -v m="$m" 'BEGIN { printf "hit/miss ratio: %.1fx\n", h/m }'
echo "($(date -u +%F) $(nproc) cores; wrk -t1 -c32 on core 1, gateway + upstream on core 0, ${secs}s each after 2s warm-up)"
