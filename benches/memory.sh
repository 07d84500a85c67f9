#!/usr/bin/env bash
# Memory benchmark: is cache.capacity_bytes what the process really holds? Not a test.
# Usage: benches/memory.sh [capacity-MiB] [fill-seconds]   (default 256 and 60)
#
# Same set-up as compare.sh (benches/lib.sh), the upstream gzipping like Cliniko (UP_GZIP):
#   1. bytes from the upstream per 100-record page, identity vs gzip (what the gateway asks);
#   2. for cache.compress = false, then true: a release gateway with capacity C filled by
#      unique-URL misses (wrk, 32 connections) for the given seconds; peak RSS sampled every
#      0.2 s against the target 1.25 x C + 64 MiB, and the answers held per MiB of capacity at
#      the end (cache_entries from /metrics);
#   3. in the compress = true run, cache hits for a gzip caller beside an identity caller.
# Failed responses (non-2xx) are reported, never counted silently.
set -euo pipefail
cd "$(dirname "$0")/.."
cap_mib=${1:-256} secs=${2:-60}
UP=${UP_PORT:-19743} GW=${GW_PORT:-19390} ADMIN=${ADMIN_PORT:-19391} UP_GZIP=1
source "$(dirname "$0")/lib.sh"
need curl curl
export CLINIKO_GATEWAY_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
wait_ports "$UP"

page_bytes() { curl -s --cacert "$w/ca.pem" "$@" -o /dev/null -w '%{size_download}' \
  -H "Authorization: Basic $basic" "https://localhost:$UP/v1/bookings"; }
plain=$(page_bytes) gz=$(page_bytes -H 'Accept-Encoding: gzip')
echo "bytes from the upstream per 100-record page: identity $plain, gzip $gz ($(awk -v a="$plain" -v b="$gz" 'BEGIN {printf "%.1f", a/b}')x fewer)"

metric() { curl -s -H "Authorization: Bearer $CLINIKO_GATEWAY_ADMIN_TOKEN" \
  "http://127.0.0.1:$ADMIN/metrics" | awk -v m="cliniko_gateway_$1" '$1 == m {print $2}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wrk_run() { # seconds, extra args...
  local s=$1; shift
  local out; out=$(taskset -c 1 wrk -t1 -c32 -d"${s}s" -H "Authorization: Bearer $token" "$@" \
    "http://127.0.0.1:$GW/v1/practitioners")
  if grep -q "Non-2xx" <<<"$out"; then echo "WARNING: failed responses: $(grep Non-2xx <<<"$out")" >&2; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

cap=$((cap_mib * 1024 * 1024)) target=$((cap_mib * 5 / 4 + 64))
printf "\n%-9s %10s %10s %9s %12s %14s %12s\n" compress "misses/s" entries "MiB held" "entries/MiB" "peak RSS MiB" "target MiB"
for compress in false true; do
  gw_config "$GW" 10000 >"$w/gw.toml"
  add_bench_key "$w/gw.toml"
  CLINIKO_GATEWAY__CACHE__CAPACITY_BYTES=$cap CLINIKO_GATEWAY__CACHE__COMPRESS=$compress \
    CLINIKO_GATEWAY__ADMIN__LISTEN="127.0.0.1:$ADMIN" CLINIKO_GATEWAY__UPSTREAM__MAX_IN_FLIGHT_PER_USER=64 \
    taskset -c 0 "$bin" serve --config "$w/gw.toml" >"$w/gw-$compress.log" 2>&1 &
  gw=$!; pids+=($gw)
  wait_ports "$GW" "$ADMIN"
  token=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)
  peak=0
  ( while kill -0 "$gw" 2>/dev/null; do echo "$(rss_kib "$gw")"; sleep 0.2; done ) >"$w/rss-$compress" &
  sampler=$!
  rps=$(wrk_run "$secs" -s "$w/unique.lua")
  kill "$sampler" 2>/dev/null || true
  peak=$(sort -n "$w/rss-$compress" | tail -1)
  entries=$(metric cache_entries) held=$(metric cache_weighted_bytes)
  printf "%-9s %10s %10s %9.1f %12.1f %14.1f %12s\n" "$compress" "$rps" "$entries" \
    "$(awk -v b="$held" 'BEGIN {print b/1048576}')" "$(awk -v e="$entries" -v c="$cap_mib" 'BEGIN {print e/c}')" \
    "$(awk -v k="$peak" 'BEGIN {print k/1024}')" "$target"
  if [ "$compress" = true ]; then
    wrk_run 2 >/dev/null  # the hot entry in place
    hit_id=$(wrk_run 10) hit_gz=$(wrk_run 10 -H 'Accept-Encoding: gzip')
  fi
  kill "$gw"; wait "$gw" 2>/dev/null || true
done
echo
echo "cache hits/s, same gateway and run: identity caller $hit_id, gzip caller $hit_gz ($(awk -v a="$hit_gz" -v b="$hit_id" 'BEGIN {printf "%.2f", a/b}')x)"
echo "($(date -u +%F) $(nproc) cores; C = $cap_mib MiB, ${secs}s of unique-URL misses per run; wrk -t1 -c32 on core 1, gateway + upstream on core 0)"
