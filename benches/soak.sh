#!/usr/bin/env bash
# Memory under load: the gateway's RSS with 10,000 cached responses, while a 25 MiB response
# streams through, and over a steady-load soak. Not a test.
#
#   benches/soak.sh [soak-seconds]      (default 600: the 10-minute soak)
#
# Same set-up as compare.sh (benches/lib.sh): the TLS upstream on core 0 with the gateway,
# wrk on core 1. Prints a small report and writes it to target/bench/soak.md.
set -euo pipefail
cd "$(dirname "$0")/.."
soak=${1:-600}
UP=${UP_PORT:-19543} GW=${GW_PORT:-19190}
source "$(dirname "$0")/lib.sh"

gw_config "$GW" 10000 >"$w/gw.toml"
add_bench_key "$w/gw.toml"
taskset -c 0 "$bin" serve --config "$w/gw.toml" >"$w/gw.log" 2>&1 &
gwpid=$!; pids+=($gwpid)
wait_ports "$UP" "$GW"
hs=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)
rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$gwpid/status"; }
hwm() { awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$gwpid/status"; }
base="http://127.0.0.1:$GW"

# Warm up the common paths, then note where RSS starts.
taskset -c 1 wrk -t1 -c16 -d3s -H "Authorization: Bearer $hs" "$base/v1/patients" >/dev/null
start_rss=$(rss)

# 10,000 distinct cached responses (each a ~1.5 KB business list under its own query).
cat >"$w/fill.lua" <<'LUA'
n = 0
request = function()
  n = n + 1
  if n > 10000 then n = 1 end
  return wrk.format(nil, "/v1/businesses?entry=" .. n)
end
LUA
taskset -c 1 wrk -t1 -c16 -d6s -H "Authorization: Bearer $hs" -s "$w/fill.lua" "$base" >/dev/null
filled_rss=$(rss)
hits=$(curl -s -o /dev/null -w "%{http_code} %header{x-cache}" -H "Accept:" -H "Authorization: Bearer $hs" "$base/v1/businesses?entry=4242")

# A 25 MiB response, streamed (not cached: /v1/invoices is not a cached path).
before_big=$(hwm)
bytes=$(curl -s -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $hs" "$base/v1/invoices/export")
after_big=$(hwm)

# Steady load: misses and hits mixed, RSS sampled every 10 s.
cat >"$w/mix.lua" <<'LUA'
n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then return wrk.format(nil, "/v1/patients") end
  return wrk.format(nil, "/v1/businesses?entry=" .. (n % 10000 + 1))
end
LUA
taskset -c 1 wrk -t1 -c32 -d"${soak}s" -H "Authorization: Bearer $hs" -s "$w/mix.lua" "$base" >"$w/soak.txt" &
wrkpid=$!
samples=()
while kill -0 "$wrkpid" 2>/dev/null; do samples+=("$(rss)"); sleep 10; done
wait "$wrkpid" || true
rps=$(awk '/Requests\/sec/ {print $2}' "$w/soak.txt")
stats=$(printf '%s\n' "${samples[@]}" | awk 'NR==1 {f=$1; min=$1; max=$1} {if ($1<min) min=$1; if ($1>max) max=$1; l=$1}
  END {printf "first %.1f, last %.1f, min %.1f, max %.1f MiB; spread %.1f%% of first", f, l, min, max, (max-min)*100/f}')

{
  echo "## soak.sh $(date -u '+%F %H:%M') UTC — $(nproc) cores, gateway + upstream on core 0, wrk on core 1"
  echo
  echo "| check | result | target |"
  echo "|---|---|---|"
  echo "| RSS after warm-up | ${start_rss} MiB | |"
  echo "| RSS with 10,000 cached responses | ${filled_rss} MiB (probe: $hits) | ≤ 64 MiB |"
  echo "| peak RSS before / after streaming a 25 MiB response ($bytes bytes) | ${before_big} / ${after_big} MiB | growth of a few MiB at most |"
  echo "| RSS over a ${soak}s soak at ${rps} req/s (${#samples[@]} samples) | $stats | flat, ±10 % |"
} | tee target/bench/soak.md
