#!/usr/bin/env bash
# Instructions per request of the gateway (callgrind), steadier than wall clock on a shared host.
#
#   benches/callgrind.sh [miss|fill|hit|floor] [requests]     (default: miss 1000)
#   CONNS=32 benches/callgrind.sh miss 20                      (wrk, 32 connections, 20 s)
#
# The set-up of benches/compare.sh (benches/lib.sh: nginx upstream over TLS, the bench config);
# one curl keep-alive connection sends the requests one after another, identity (no
# Accept-Encoding). miss: /v1/patients, compare.sh's miss row (no cache rule: passes the cache);
# fill: a unique /v1/practitioners query each time (a real cache fill); hit: one cached
# /v1/practitioners; floor: benches/stack_floor.rs doing only nginx's job. Config changes go in
# the environment as usual (CLINIKO_GATEWAY__CACHE__COMPRESS=false ...); AE=gzip makes the
# caller send Accept-Encoding (a gzip caller's hit: `AE=gzip benches/callgrind.sh hit`). Prints
# instructions per request and the top symbols (inclusive: the self-cost listing is empty
# on some valgrind builds); the profile stays in
# target/bench/callgrind-<scenario>.out. Build with CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
# for file:line in callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:-miss} n=${2:-1000}
UP=${UP_PORT:-19543} GW=${GW_PORT:-19590}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
source "$(dirname "$0")/lib.sh"
out=$PWD/target/bench/callgrind-$scenario.out
rm -f "$out"*
vg=(valgrind --tool=callgrind --callgrind-out-file="$out")

gw_config "$GW" 10000 >"$w/gw.toml"
add_bench_key "$w/gw.toml"
if [ "$scenario" = floor ]; then
  cargo build --release --quiet --example stack_floor
  "${vg[@]}" "${CARGO_TARGET_DIR:-$PWD/target}/release/examples/stack_floor" \
    "127.0.0.1:$GW" "https://localhost:$UP/v1" "$w/ca.pem" 2>"$w/vg.log" &
else
  "${vg[@]}" "$bin" serve --config "$w/gw.toml" >"$w/gw.log" 2>"$w/vg.log" &
fi
pids+=($!)
wait_ports "$UP"
for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$GW") 2>/dev/null && break; sleep 0.2; done  # slow under valgrind
hs=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)

# A curl config of $1 requests to the scenario's URL, sent over one connection.
requests() {
  local path=/v1/patients
  for i in $(seq "$1"); do
    case $scenario in fill) path="/v1/practitioners?miss=$RANDOM$RANDOM$i" ;; hit) path=/v1/practitioners ;; esac
    printf 'url = "http://127.0.0.1:%s%s"\noutput = /dev/null\n' "$GW" "$path"
  done
}
send() { requests "$1" | curl -sf -H "Authorization: Bearer $hs" ${AE:+-H "Accept-Encoding: $AE"} -K - -w '%{http_code}\n' | sort | uniq -c >&2; }
wrk_miss() { wrk -t1 -c"$CONNS" -d"$1s" -H "Authorization: Bearer $hs" "http://127.0.0.1:$GW/v1/patients"; }
send 200                                 # warm-up: pools, token cache, the cached entry
if [ -n "${CONNS:-}" ]; then wrk_miss 5 >/dev/null; fi  # and as many upstream connections
callgrind_control -z "${pids[-1]}" >/dev/null
if [ -n "${CONNS:-}" ]; then # concurrent: n is seconds; requests cut off at the end are few
  [ "$scenario" = miss ] || { echo "CONNS: miss only" >&2; exit 64; }
  n=$(wrk_miss "$n" | awk '/requests in/ {print $1} /Non-2xx/ {print "non-2xx: " $0 > "/dev/stderr"}')
else
  send "$n"
fi
callgrind_control -d "${pids[-1]}" >/dev/null
total=$(callgrind_annotate "$out".* 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$scenario: $((total / n)) instructions per request ($total over $n)"
callgrind_annotate --inclusive=yes "$out".* 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '3,28p' |
  awk -v n="$n" '{ir=$1; gsub(",", "", ir); $1=""; $2=""; printf "%9d  %s\n", ir / n, $0}'
