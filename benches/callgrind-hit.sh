#!/usr/bin/env bash
# Instructions per request of the release gateway under callgrind: repeatable to a fraction of
# a percent whatever else the machine is doing, unlike requests/s on 2 shared cores. Not a test.
#
#   benches/callgrind-hit.sh [requests]     (default 2000 per scenario)
#
# Same set-up as compare.sh (benches/lib.sh: the TLS upstream, its ~15 KB list); the gateway
# runs under `valgrind --tool=callgrind`, once with `cache.compress = true` (the default) and
# once with `false`. Per scenario: a few warm-up requests (the entry filled, the JWT cached),
# counters zeroed, N requests on one keep-alive connection (curl -K), counters dumped;
# instructions / N is printed. Scenarios, all with a verified JWT:
#   hit identity   GET /v1/practitioners, no Accept-Encoding
#   hit gzip       the same with Accept-Encoding: gzip
#   fill identity  GET /v1/practitioners?miss=<n>, n unique: a miss that is stored
#   uncached       GET /v1/patients (no cache rule: upstream over TLS, link rewrite)
# ANNOTATE=<n> prints each scenario's top n functions (inclusive) from callgrind_annotate.
# ONLY=<regex> runs the scenarios it matches; COMPRESS="true false" picks the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
UP=${UP_PORT:-19843} GW=${GW_PORT:-19890}
source "$(dirname "$0")/lib.sh"
need valgrind valgrind; need curl curl
wait_ports "$UP"

scenario() { # name, path, extra curl config lines
  local name=$1 path=$2 extra=${3:-}
  if [ -n "${ONLY:-}" ] && ! [[ "$name" =~ $ONLY ]]; then return; fi
  local cfg=$w/curl-$RANDOM.cfg warm=$w/warm.cfg
  curl_config() { # first, last: one request each ({n} in the path numbered)
    echo "header = \"Authorization: Bearer $token\""; [ -n "$extra" ] && echo "$extra"
    for i in $(seq "$1" "$2"); do echo "url = \"http://127.0.0.1:$GW${path//\{n\}/$i}\""; echo "output = /dev/null"; done
  }
  curl_config $((n + 1)) $((n + 5)) >"$warm"
  curl_config 1 "$n" >"$cfg"
  curl -s --fail -K "$warm"
  callgrind_control -z "$gw" >/dev/null
  curl -s --fail -K "$cfg"
  callgrind_control --dump="${name/ /-}" "$gw" >/dev/null
  local out; out=$(ls -t "$w"/cg.out.* | head -1)
  local total; total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
  printf "%-10s %-16s %12s %10.0f\n" "$compress" "$name" "$total" "$(awk -v t="$total" -v n="$n" 'BEGIN {print t/n}')"
  if [ -n "${ANNOTATE:-}" ]; then
    callgrind_annotate --inclusive=yes "$out" 2>/dev/null | sed -n "1,$((ANNOTATE + 25))p" | tail -n "$ANNOTATE"
  fi
}

printf "%-10s %-16s %12s %10s\n" compress scenario instructions "per req"
for compress in ${COMPRESS:-true false}; do
  gw_config "$GW" 10000 >"$w/gw.toml"
  add_bench_key "$w/gw.toml"
  token=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)
  CLINIKO_GATEWAY__CACHE__COMPRESS=$compress valgrind --tool=callgrind -q \
    --callgrind-out-file="$w/cg.out.%p" "$bin" serve --config "$w/gw.toml" >"$w/gw.log" 2>&1 &
  gw=$!; pids+=($gw)
  for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$GW") 2>/dev/null && break; sleep 0.2; done
  scenario "hit identity" /v1/practitioners
  scenario "hit gzip" /v1/practitioners 'header = "Accept-Encoding: gzip"'
  scenario "fill identity" "/v1/practitioners?miss={n}"
  scenario "uncached" /v1/patients
  kill "$gw"; wait "$gw" 2>/dev/null || true
done
echo "($(date -u '+%F %H:%M') UTC; $n requests per scenario on one connection, after 5 warm-up requests)"
