#!/usr/bin/env bash
# Scale benchmark: what the number of users, keys, grants and cached answers costs. Not a test.
# Usage: benches/scale.sh [seconds-per-window]   (default 10)
#
# The same release gateway twice, one run, same machine (benches/lib.sh: TLS nginx upstream on
# core 0 with the gateway, wrk on core 1):
#   small: the 1,000 callers only (1,000 users, 1,000 keys), 1 grant, an empty cache;
#   large: 100,000 users sharing 20,000 keys, 1,000 policy grants (one per caller role),
#          10,000 answers in the cache before measuring.
# For each: start-up time (spawn -> /readyz 200), key-store reload time (POST /admin/reload,
# which answers once the new store is in use), RSS after start / after filling / peak, and
# hit and miss p50/p99 with 1,000 distinct callers (tokens rotating per request).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
UP=${UP_PORT:-19743} GW=${GW_PORT:-19390} ADMIN=${ADMIN_PORT:-19391}
source "$(dirname "$0")/lib.sh"
need curl curl
export CLINIKO_GATEWAY_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
callers=1000

# config for one set-up: $1 = grants (0 = the bench's single grant)
scale_config() {
  gw_config "$GW" 20000 | sed 's/^claims = \[\]/claims = ["roles"]/'
  printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$ADMIN"
  for i in $(seq 0 $(($1 - 1))); do
    printf '[policy.grants.g%d]\nmethods = ["GET"]\npaths = ["/v1/practitioners", "/v1/x%d"]\n' "$i" "$i"
  done
}
# key store lines: $1 users over $2 keys (user u<i> -> key k<i mod keys>), plus the bench user
store_lines() {
  python3 - "$1" "$2" <<'PY'
import sys
users, keys = int(sys.argv[1]), int(sys.argv[2])
for i in range(users):
    print(f"u{i}\tscalekey{i % keys:016d}-au1")
PY
}
# one token per caller, each with a role naming a grant (or none: the default grant)
mint_tokens() { # config, grants
  for i in $(seq 0 $((callers - 1))); do
    if [ "$2" -gt 0 ]; then
      "$bin" token mint --config "$1" --sub "u$i" --ttl 2h --claim "roles=[\"g$((i % $2))\"]"
    else
      "$bin" token mint --config "$1" --sub "u$i" --ttl 2h
    fi
  done >"$w/tokens.txt"
}
rss() { awk -v f="$2" '$1 == f":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
metric() { curl -s -H "Authorization: Bearer $CLINIKO_GATEWAY_ADMIN_TOKEN" "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

cat >"$w/rotate.lua" <<'LUA'
tokens, counter = {}, 0
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
request = function()
  counter = counter + 1
  local path = "/v1/practitioners"
  if os.getenv("UNIQUE") == "1" then path = path .. "?miss=" .. counter .. "-" .. math.random(1e9) end
  return wrk.format(nil, path, { Authorization = "Bearer " .. tokens[counter % #tokens + 1] })
end
LUA

window() { # name, unique(0/1), seconds
  local out
  out=$(TOKENS="$w/tokens.txt" UNIQUE=$2 taskset -c 1 wrk -t1 -c32 -d"$3s" --latency -s "$w/rotate.lua" "http://127.0.0.1:$GW")
  if grep -q "Non-2xx" <<<"$out"; then echo "WARNING: $1 had failed responses: $(grep Non-2xx <<<"$out")" >&2; fi
  awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {printf "%s %s %s", rps, p50, p99}' <<<"$out"
}

setup() { # name, users, keys, grants, cached
  local name=$1 dir="$w/$1"
  mkdir -p "$dir"
  scale_config "$4" >"$dir/gw.toml"
  cp "$w/ca.pem" "$w/rs.pub" "$dir/"
  local t0; t0=$(date +%s%N)
  { store_lines "$2" "$3"; printf 'bench\t%s\n' "$key"; } | "$bin" keys import --config "$dir/gw.toml" >/dev/null
  local import_ms; import_ms=$(ms_since "$t0")
  mint_tokens "$dir/gw.toml" "$4"
  t0=$(date +%s%N)
  taskset -c 0 "$bin" serve --config "$dir/gw.toml" >"$dir/gw.log" 2>&1 &
  local pid=$!; pids+=($pid)
  until curl -sf -o /dev/null "http://127.0.0.1:$GW/readyz"; do sleep 0.01; done
  local start_ms rss_start
  start_ms=$(ms_since "$t0"); rss_start=$(rss $pid VmRSS)
  local reload_s; reload_s=$(curl -s -o /dev/null -w '%{time_total}' -X POST \
    -H "Authorization: Bearer $CLINIKO_GATEWAY_ADMIN_TOKEN" "http://127.0.0.1:$ADMIN/admin/reload")
  if [ "$5" -gt 0 ]; then # fill: unique URLs until the cache holds $5 answers
    while [ "$(metric cliniko_gateway_cache_entries | cut -d. -f1)" -lt "$5" ]; do window fill 1 2 >/dev/null; done
  fi
  local entries rss_filled
  entries=$(metric cliniko_gateway_cache_entries); rss_filled=$(rss $pid VmRSS)
  window warm 0 2 >/dev/null
  local hit miss; hit=$(window hit 0 "$secs"); miss=$(window miss 1 "$secs")
  printf '%-6s %8s %6s %6s %8s %9s %8s %8s %8s | %s | %s\n' "$name" "$2" "$3" "$4" "${entries:-0}" \
    "$import_ms" "$start_ms" "$(awk -v s="$reload_s" 'BEGIN {printf "%.0f", s * 1000}')" \
    "$rss_start/$rss_filled/$(rss $pid VmHWM)" "$hit" "$miss"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

wait_ports "$UP"
printf '%-6s %8s %6s %6s %8s %9s %8s %8s %8s | %s | %s\n' setup users keys grants cached \
  "import-ms" "start-ms" "reload-ms" "RSS-MiB(start/filled/peak)" "hit rps p50 p99" "miss rps p50 p99"
setup small $callers $callers 0 0
setup large 100000 20000 1000 10000
echo "($(date -u +%F) $(nproc) cores; $callers callers rotating; wrk -t1 -c32 on core 1; ${secs}s windows after 2s warm-up)"
