#!/usr/bin/env bash
# The gateway beside nginx, same machine, same run, same upstream. Not a test.
#
#   benches/compare.sh [seconds-per-scenario]        (default 10; ROUNDS=3: whole run ~8 min)
#
# Starts on loopback (all installed from Debian if missing: nginx, wrk, openssl):
#   - upstream: nginx over TLS 1.3 serving a ~15 KB Cliniko-style list (absolute links)
#   - nginx proxy doing the same job as the gateway as closely as it can (sets Authorization,
#     User-Agent, Accept; TLS to the upstream with verification; upstream keep-alive), and a
#     second nginx server with proxy_cache
#   - the gateway (release build), a second gateway with the verified-token cache off for
#     the RS256 scenario (every request a different token: no token-cache hit), and a third
#     talking HTTP/2 to the same upstream server (a second port of it that offers h2)
#   - the stack's floor (`benches/stack_floor.rs`): the same hyper/rustls/tokio client and
#     server doing only what nginx does, over h1 and h2: what the gateway's own work costs is
#     the difference
#   - issue 16's cache-fill pair, every request a new URL under /v1/practitioners (the path the
#     gateway caches; lib.sh's unique.lua), identity encoding both sides: a third nginx (njs
#     module, libnginx-mod-http-js) checking the caller's HS256 JWT in JavaScript, limit_req
#     on its `sub`, proxy_cache on tmpfs (in memory, as the gateway's cache is); and a fourth
#     gateway, so the fill leaves the other gateways' caches and RSS alone (a fifth fills over
#     HTTP/2, which nginx cannot speak upstream). All are probed before they are measured
#     (401 for a bad token, MISS then HIT for a new URL, no Content-Encoding) and the run
#     stops if one is wrong; after the window, upstream fetches per request (1.00: every
#     request a miss) and failed responses are printed, then the ratio of the two
#   - issue 16's ratio targets turned into CPU per request: what each allows, what the floor
#     alone costs, so the room left for the gateway's own work beside what it spends now
# Load: wrk -t1 -c$CONNS pinned to core 1; upstream and proxies share core 0 (taskset), 2 s
# warm-up before each measured window; every row is measured once per round (ROUNDS, default
# 3, rounds one after the other) and shown by its median round. Prints one table (requests/s, p50, p99, ratios against
# nginx measured in this run, the gateway's RSS, upstream TLS handshakes per 10k requests, CPU
# time per request of the proxy and of the upstream, from /proc) and
# writes it to target/bench/compare.md. PROFILE=<part of a scenario name> records a perf
# profile of the proxy (gateway, nginx or floor) during each scenario it matches into
# target/bench/perf-<scenario>.data (PERF_CALLGRAPH=
# "--call-graph dwarf" for full stacks, or build with frame pointers: CARGO_TARGET_DIR=<dir>
# RUSTFLAGS="-C force-frame-pointers=yes"); ONLY=<regex> runs only the scenarios it matches.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${CONNS:-32}
threads=${THREADS:-1}
rounds=${ROUNDS:-3}
UP=${UP_PORT:-19443} NGX=${NGX_PORT:-19080} NGXC=${NGXC_PORT:-19081} GW=${GW_PORT:-19090} GWR=${GWR_PORT:-19091}
# The same upstream server also listens here offering HTTP/2 (ALPN), as Cliniko's edge does;
# nginx cannot proxy to an h2 upstream, the gateway negotiates it.
UP2=${UP2_PORT:-19444} GW2=${GW2_PORT:-19092} FL1=${FL1_PORT:-19093} FL2=${FL2_PORT:-19094}
# The cache-fill pair: nginx + njs, and its own gateway.
NJS=${NJS_PORT:-19082} GWF=${GWF_PORT:-19095} GWF2=${GWF2_PORT:-19096}

source "$(dirname "$0")/lib.sh"
njs_so=/usr/lib/nginx/modules/ngx_http_js_module.so
[ -f "$njs_so" ] || { apt-get update -qq && apt-get install -y -qq libnginx-mod-http-js >/dev/null; }

# --- nginx: upstream (TLS), plain proxy, proxy_cache --------------------------------------
mkdir -p "$w/cache"
proxy_block="proxy_pass https://cliniko; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host localhost; proxy_set_header Authorization \"Basic $basic\";
      proxy_set_header User-Agent \"$ua\"; proxy_set_header Accept application/json;
      proxy_ssl_server_name on; proxy_ssl_name localhost; proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $w/ca.pem; proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.3;"
cat >"$w/proxy.conf" <<NGINX
$common
pid $w/proxy.pid;
error_log $w/proxy-error.log warn;
http {
  access_log off;
  proxy_cache_path $w/cache levels=1:2 keys_zone=c:10m max_size=100m inactive=10m use_temp_path=off;
  upstream cliniko { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX; keepalive_requests 1000000;
    location / { $proxy_block }
  }
  server {
    listen 127.0.0.1:$NGXC; keepalive_requests 1000000;
    location / {
      proxy_cache c; proxy_cache_valid 200 5m; proxy_ignore_headers Cache-Control Expires Set-Cookie;
      $proxy_block
    }
  }
}
NGINX
taskset -c 0 nginx -c "$w/proxy.conf" -p "$w" &
ngxpid=$!; pids+=($ngxpid)

# --- nginx + njs: JWT, limit, proxy_cache; every request a miss --------------------------
# Its own instance, so the JS module and a cache filling towards its limit touch no other row.
# The checks are the gateway's with the bench config: HS256 with the gateway's secret, `exp`
# required and `nbf` honoured with its default 30 s leeway, `iss` (if any) a string, `aud`
# unchecked (no issuers or audiences configured), `sub` a non-empty string of at most 256
# characters without ASCII controls (the gateway counts bytes and refuses every Unicode
# control: the same for the bench token).
cat >"$w/jwt.js" <<JS
import crypto from 'crypto';
const SECRET = '$CLINIKO_GATEWAY_HMAC_SECRET';
const LEEWAY = 30;
function claims(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString());
}
// The caller's user id when its token verifies, else '' (answered 401).
function sub(r) {
  const auth = r.headersIn.Authorization;
  if (!auth || !auth.startsWith('Bearer ')) return '';
  const parts = auth.slice(7).split('.');
  if (parts.length !== 3) return '';
  const mac = crypto.createHmac('sha256', SECRET).update(parts[0] + '.' + parts[1]);
  if (mac.digest('base64url') !== parts[2]) return '';
  let head, c;
  try { head = claims(parts[0]); c = claims(parts[1]); } catch (e) { return ''; }
  if (head.alg !== 'HS256') return '';
  const now = Date.now() / 1000;
  if (typeof c.exp !== 'number' || now > c.exp + LEEWAY) return '';
  if (c.nbf !== undefined && (typeof c.nbf !== 'number' || now < c.nbf - LEEWAY)) return '';
  if (c.iss !== undefined && typeof c.iss !== 'string') return '';
  if (typeof c.sub !== 'string' || c.sub.length === 0 || c.sub.length > 256) return '';
  if (/[\x00-\x1f\x7f]/.test(c.sub)) return '';
  return c.sub;
}
export default { sub };
JS
# limit_req at the gateway's bench budget (1,000,000 a second, burst 1,000,000, per user):
# it runs on every request and refuses none. The cache may hold what the gateway's does
# (256 MiB); keys_zone 32m holds ~256k keys, more than a run asks for. It lives in memory
# (tmpfs), as the gateway's does: on this machine's disk its file writes cost nginx from 0.1
# to 1.4 ms of CPU per request from one run to the next, with the other work's I/O.
fill=$(mktemp -d /dev/shm/compare-fill.XXXXXX)
trap 'cleanup; rm -rf "$fill"' EXIT
cat >"$w/njs.conf" <<NGINX
load_module $njs_so;
$common
pid $w/njs.pid;
error_log $w/njs-error.log warn;
http {
  access_log off;
  js_import jwt from $w/jwt.js;
  js_set \$jwt_sub jwt.sub;
  limit_req_zone \$jwt_sub zone=users:10m rate=1000000r/s;
  proxy_cache_path $fill levels=1:2 keys_zone=f:32m max_size=256m inactive=10m use_temp_path=off;
  upstream cliniko { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NJS; keepalive_requests 1000000;
    # Rewrite phase: a bad token is refused before the limit (preaccess) counts it.
    if (\$jwt_sub = "") { return 401; }
    location / {
      limit_req zone=users burst=1000000 nodelay; limit_req_status 429;
      proxy_cache f; proxy_cache_valid 200 5m; proxy_ignore_headers Cache-Control Expires Set-Cookie;
      add_header X-Cache-Status \$upstream_cache_status;
      $proxy_block
    }
  }
}
NGINX
taskset -c 0 nginx -c "$w/njs.conf" -p "$w" &
njspid=$!; pids+=("$njspid")

gw_config "$GW" 10000 >"$w/gw.toml"
gw_config "$GWR" 0 >"$w/gw-rs.toml"
gw_config "$GW2" 10000 "$UP2" >"$w/gw-h2.toml"
gw_config "$GWF" 10000 >"$w/gw-fill.toml"
gw_config "$GWF2" 10000 "$UP2" >"$w/gw-fill-h2.toml"
add_bench_key "$w/gw.toml"
taskset -c 0 "$bin" serve --config "$w/gw.toml" >"$w/gw.log" 2>&1 &
gwpid=$!; pids+=($gwpid)
taskset -c 0 "$bin" serve --config "$w/gw-rs.toml" >"$w/gw-rs.log" 2>&1 &
gwrpid=$!; pids+=($gwrpid)
taskset -c 0 "$bin" serve --config "$w/gw-h2.toml" >"$w/gw-h2.log" 2>&1 &
gw2pid=$!; pids+=($gw2pid)
taskset -c 0 "$bin" serve --config "$w/gw-fill.toml" >"$w/gw-fill.log" 2>&1 &
gwfpid=$!; pids+=("$gwfpid")
taskset -c 0 "$bin" serve --config "$w/gw-fill-h2.toml" >"$w/gw-fill-h2.log" 2>&1 &
gwf2pid=$!; pids+=("$gwf2pid")
if [ -z "${GATEWAY_BIN:-}" ]; then cargo build --release --quiet --example stack_floor; fi
floor=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/stack_floor
taskset -c 0 "$floor" "127.0.0.1:$FL1" "https://localhost:$UP/v1" "$w/ca.pem" &
fl1pid=$!; pids+=($fl1pid)
taskset -c 0 "$floor" "127.0.0.1:$FL2" "https://localhost:$UP2/v1" "$w/ca.pem" &
fl2pid=$!; pids+=($fl2pid)
hs=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)
"$bin" token mint --sub bench --ttl 2h --signing-key "$w/rs.key" --alg RS256 --count 3000 >"$w/rs-tokens.txt"
wait_ports "$UP" "$UP2" "$NGX" "$NGXC" "$GW" "$GWR" "$GW2" "$FL1" "$FL2" "$NJS" "$GWF" "$GWF2"

cat >"$w/tokens.lua" <<LUA
local tokens = {}
for line in io.lines("$w/rs-tokens.txt") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/v1/patients", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA

# --- scenarios --------------------------------------------------------------------------------
results=()
wanted() { [ -z "${ONLY:-}" ] || [[ "$1" =~ $ONLY ]]; }
measure() { # name, url, extra wrk args...
  local name=$1 url=$2; shift 2
  wanted "$name" || return 0
  taskset -c 1 wrk -t"$threads" -c"$conns" -d2s "$@" "$url" >/dev/null 2>&1
  sleep 0.3  # nginx's buffered log of the warm-up lands before it is emptied
  : >"$w/up-conns.log"
  local proxy=""
  case "$url" in
    *":$NGX/"* | *":$NGXC/"*) proxy=$ngxpid ;;
    *":$NJS/"*) proxy=$njspid ;;
    *":$GWF/"*) proxy=$gwfpid ;;
    *":$GWF2/"*) proxy=$gwf2pid ;;
    *":$GW/"*) proxy=$gwpid ;;
    *":$GWR/"*) proxy=$gwrpid ;;
    *":$GW2/"*) proxy=$gw2pid ;;
    *":$FL1/"*) proxy=$fl1pid ;;
    *":$FL2/"*) proxy=$fl2pid ;;
  esac
  local prof=""
  if [ -n "${PROFILE:-}" ] && [[ "$name" == *"$PROFILE"* ]] && [ -n "$proxy" ]; then
    # nginx does the work in its worker, a child of the process started here.
    local target; target=$(pgrep -P "$proxy" | paste -sd, || true); target=${target:-$proxy}
    local file; file=target/bench/perf-$(tr -c 'a-z0-9\n' - <<<"$name" | tr -s -).data
    perf record -q -e cpu-clock -F ${PERF_FREQ:-999} ${PERF_CALLGRAPH:--g} -p "$target,$proxy" -o "$file" -- sleep "$secs" 2>/dev/null &
    prof=$!
  fi
  local up0 px0=0 sy0=0; up0=$(cpu_ticks "$uppid")
  if [ -n "$proxy" ]; then px0=$(cpu_ticks "$proxy"); sy0=$(SYS_ONLY=1 cpu_ticks "$proxy"); fi
  local out; out=$(taskset -c 1 wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "$@" "$url")
  local up1 px1=0 sy1=0; up1=$(cpu_ticks "$uppid")
  if [ -n "$proxy" ]; then px1=$(cpu_ticks "$proxy"); sy1=$(SYS_ONLY=1 cpu_ticks "$proxy"); fi
  if [ -n "$prof" ]; then wait "$prof" || true; fi
  sleep 0.3  # let nginx flush its buffered connection log
  local rps p50 p99 hand bad
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $5} /Socket errors/ {e=$4+$6+$8+$10} END {if (e) print "socket:" e}' <<<"$out" | paste -sd' ')
  if [ -n "$bad" ]; then
    echo "WARNING: $name had failed responses: $bad; a sample:" >&2
    local h=(); for a in "$@"; do case "$a" in -s | *.lua) ;; *) h+=("$a") ;; esac; done
    curl -s -i --max-time 5 --cacert "$w/ca.pem" "${h[@]}" "$url" 2>&1 | head -5 >&2 || true
  fi
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  hand=$(awk '{n++; c[$1]=1} END {k=0; for (x in c) k++; if (n) printf "%.1f", k*10000/n; else print "-"}' "$w/up-conns.log")
  # CPU per request in microseconds (clock ticks are 1/100 s here: getconf CLK_TCK).
  local n hz; hz=$(getconf CLK_TCK)
  n=$(awk '/requests in/ {print $1}' <<<"$out"); n=${n:-0}
  local pxus upus
  # The proxy's with its system part, "total (sys)": HTTP/1.1's extra syscalls show there.
  pxus=$(awk -v d=$((px1 - px0)) -v s=$((sy1 - sy0)) -v n="$n" -v hz="$hz" -v p="$proxy" \
    'BEGIN { if (p == "" || n == 0) print "-"; else printf "%.1f (%.1f)", d * 1e6 / hz / n, s * 1e6 / hz / n }')
  upus=$(awk -v d=$((up1 - up0)) -v n="$n" -v hz="$hz" 'BEGIN { if (n == 0) print "-"; else printf "%.1f", d * 1e6 / hz / n }')
  local fetched; fetched=$(awk -v n="$n" 'END { if (n) printf "%.2f", NR / n; else print "-" }' "$w/up-conns.log")
  results+=("$name|$rps|$p50|$p99|$hand|$pxus|$upus|$fetched|${bad:-0}")
  printf '.' >&2
}
auth=(-H "Authorization: Bearer $hs")
# --- issue 16's cache-fill pair: probed, then measured ----------------------------------------
check() { # what, expected (a glob), got
  # shellcheck disable=SC2053 # $2 is a pattern on purpose
  if [[ "$3" != $2 ]]; then echo "FAILED: $1: expected '$2', got '$3'" >&2; exit 1; fi
}
# One GET: "<status> <cache header or -> <Content-Encoding or ->".
probe() { # url, cache header, curl args...
  local url=$1 h="${2,,}:"; shift 2
  curl -s -o /dev/null -D - --max-time 5 "$@" "$url" | tr -d '\r' | awk -v h="$h" '
    NR == 1 { s = $2 } tolower($1) == h { c = $2 } tolower($1) == "content-encoding:" { e = $2 }
    END { print s, (c == "" ? "-" : c), (e == "" ? "-" : e) }'
}
# A row must do what its name says: tokens checked, a new URL a miss with an identity body
# that is stored (asked again, a hit).
probe_fill() { # base url, cache header
  local u; u="$1/v1/practitioners?probe=$(date +%s%N)"
  check "$1 without a token" "401 *" "$(probe "$u" "$2")"
  check "$1 with a bad signature" "401 *" "$(probe "$u" "$2" -H "Authorization: Bearer ${hs%.*}.AAAA")"
  check "$1 new URL" "200 MISS -" "$(probe "$u" "$2" "${auth[@]}")"
  check "$1 the same URL again" "200 HIT -" "$(probe "$u" "$2" "${auth[@]}")"
}
# Rows named twice (measured below, and read back for the targets) are named once here.
miss1_row="gateway, full path, cache miss" miss2_row="gateway, full path, cache miss, h2 upstream"
floor1_row="stack floor: hyper proxy, nothing else (h1 upstream)"
floor2_row="stack floor: hyper proxy, nothing else (h2 upstream)"
njs_row="nginx + njs JWT + limit + proxy_cache, all misses"
fill_row="gateway, cache fill (unique URLs)"
fill2_row="gateway, cache fill (unique URLs), h2 upstream"
if wanted "$njs_row"; then probe_fill "http://127.0.0.1:$NJS" X-Cache-Status; fi
if wanted "$fill_row"; then probe_fill "http://127.0.0.1:$GWF" X-Cache; fi
if wanted "$fill2_row"; then probe_fill "http://127.0.0.1:$GWF2" X-Cache; fi
# Every row is measured in each of $rounds rounds, one after the other, so a drift of the host
# falls on nginx and the gateway alike; the table shows each row's median round.
scenarios() {
  measure "direct to upstream (ceiling)" "https://localhost:$UP/v1/patients"
  measure "nginx proxy" "http://127.0.0.1:$NGX/v1/patients"
  measure "$miss1_row" "http://127.0.0.1:$GW/v1/patients" "${auth[@]}"
  measure "$miss2_row" "http://127.0.0.1:$GW2/v1/patients" "${auth[@]}"
  measure "$floor1_row" "http://127.0.0.1:$FL1/v1/patients"
  measure "$floor2_row" "http://127.0.0.1:$FL2/v1/patients"
  measure "nginx proxy_cache hit" "http://127.0.0.1:$NGXC/v1/practitioners"
  measure "gateway cache hit (JWT verified)" "http://127.0.0.1:$GW/v1/practitioners" "${auth[@]}"
  measure "gateway, RS256, new token each request" "http://127.0.0.1:$GWR/v1/patients" -s "$w/tokens.lua"

  measure "$njs_row" "http://127.0.0.1:$NJS/v1/practitioners" "${auth[@]}" -s "$w/unique.lua"
  measure "$fill_row" "http://127.0.0.1:$GWF/v1/practitioners" "${auth[@]}" -s "$w/unique.lua"
  measure "$fill2_row" "http://127.0.0.1:$GWF2/v1/practitioners" "${auth[@]}" -s "$w/unique.lua"
}
for ((round = 1; round <= rounds; round++)); do scenarios; done
echo >&2
rss=$(ps -o rss= -p "$gwpid" | awk '{printf "%.1f MiB", $1/1024}')

# Each row's median round (by requests/s; the lower middle one for an even ROUNDS), whole: its
# latencies and CPU go with it.
median_of() {
  for r in "${results[@]}"; do IFS='|' read -r n v _ <<<"$r"; if [ "$n" = "$1" ]; then echo "$v|$r"; fi; done |
    sort -t'|' -k1,1g | awk '{ row[NR] = $0 } END { if (NR) { r = row[int((NR + 1) / 2)]; sub(/^[^|]*\|/, "", r); print r } }'
}
rps_of() { median_of "$1" | cut -d'|' -f2; }
# a ÷ b as "1.23x", "-" when either is missing (a row left out by ONLY).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a/b; else print "-" }'; }
mapfile -t names < <(printf '%s\n' "${results[@]}" | cut -d'|' -f1 | awk '!seen[$0]++')
# Failed responses of a row over all its rounds (wrk's Non-2xx and socket errors).
failures() {
  for r in "${results[@]}"; do IFS='|' read -r n _ _ _ _ _ _ _ bad <<<"$r"; if [ "$n" = "$1" ]; then echo "$bad"; fi; done |
    paste -sd' '
}
# A row's proxy + upstream CPU per request (columns 6 and 7; the proxy's "total (sys)").
total_cpu() { median_of "$1" | awk -F'|' '{ split($6, p, " "); if (p[1] != "" && p[1] != "-") printf "%.1f", p[1] + $7 }'; }
# One line of the budget table: label, ratio, base requests/s, gateway row, floor row.
budget() {
  local g f; g=$(total_cpu "$4") f=$(total_cpu "$5")
  [ -n "$3" ] && [ -n "$g" ] && [ -n "$f" ] || return 0
  awk -v l="$1" -v r="$2" -v b="$3" -v g="$g" -v f="$f" \
    'BEGIN { t = 1e6 / (r * b); printf "| %s | %.1f | %.1f | %.1f | %.1f |\n", l, t, f, t - f, g - f }'
}
nginx_plain=$(rps_of "nginx proxy"); nginx_cache=$(rps_of "nginx proxy_cache hit")
nginx_njs=$(rps_of "$njs_row")
{
  echo "## compare.sh $(date -u '+%F %H:%M') UTC — $(nproc) cores, ${secs}s per scenario, median of $rounds rounds, wrk -t$threads -c$conns on core 1, servers on core 0"
  echo
  echo "| scenario | requests/s | p50 | p99 | vs nginx | upstream TLS handshakes / 10k req | proxy CPU µs/req (sys) | upstream CPU µs/req |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for name in "${names[@]}"; do
    IFS='|' read -r n v p50 p99 hand pxus upus _ <<<"$(median_of "$name")"
    case "$n" in
      *cache\ hit*) base=$nginx_cache ;;
      "$fill_row" | "$fill2_row") base=$nginx_njs ;;
      *) base=$nginx_plain ;;
    esac
    echo "| $n | $v | $p50 | $p99 | $(ratio "$v" "$base") | $hand | $pxus | $upus |"
  done
  echo
  echo "Gateway RSS after the run: $rss. Ratios: cache-hit rows against nginx proxy_cache hit, the cache fill against nginx + njs, the rest against nginx proxy."
  if wanted "$njs_row" || wanted "$fill_row" || wanted "$fill2_row"; then
    echo
    echo "Cache-fill pair: upstream fetches per request in the median round (1.00: every request a miss) nginx + njs $(median_of "$njs_row" | cut -d'|' -f8), gateway $(median_of "$fill_row" | cut -d'|' -f8), gateway over h2 $(median_of "$fill2_row" | cut -d'|' -f8); failed responses per round $(failures "$njs_row"), $(failures "$fill_row") and $(failures "$fill2_row")."
    echo "Issue 16 target, gateway cache fill ÷ nginx + njs JWT + limit + proxy_cache (goal ≥ 2x): $(ratio "$(rps_of "$fill_row")" "$nginx_njs") over HTTP/1.1, $(ratio "$(rps_of "$fill2_row")" "$nginx_njs") over HTTP/2 upstream"
  fi
  budgets=$(
    budget "miss ≥ 1.1x nginx proxy, h1" 1.1 "$nginx_plain" "$miss1_row" "$floor1_row"
    budget "miss ≥ 1.4x nginx proxy, h2" 1.4 "$nginx_plain" "$miss2_row" "$floor2_row"
    budget "fill ≥ 2x nginx + njs, h1" 2 "$nginx_njs" "$fill_row" "$floor1_row"
    budget "fill ≥ 2x nginx + njs, h2" 2 "$nginx_njs" "$fill2_row" "$floor2_row"
  )
  if [ -n "$budgets" ]; then
    echo
    echo "Issue 16's ratio targets as CPU: core 0 runs the proxy and the upstream, so a row's requests/s ≈ 10^6 ÷ (proxy + upstream CPU µs per request); R × a base row allows 10^6 ÷ (R × its requests/s) in all. The gateway's own work is its row's total minus the floor's (the upstream's CPU it causes included)."
    echo
    echo "| target | µs/req allowed | floor's total | room for the gateway's own work | gateway's own work now |"
    echo "|---|---:|---:|---:|---:|"
    echo "$budgets"
  fi
} | tee target/bench/compare.md
