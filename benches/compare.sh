#!/usr/bin/env bash
# The gateway beside nginx, same machine, same run, same upstream. Not a test.
#
#   benches/compare.sh [seconds-per-scenario]        (default 10; whole run < 5 min)
#
# Starts on loopback (all installed from Debian if missing: nginx, wrk, openssl):
#   - upstream: nginx over TLS 1.3 serving a ~15 KB Cliniko-style list (absolute links)
#   - nginx proxy doing the same job as the gateway as closely as it can (sets Authorization,
#     User-Agent, Accept; TLS to the upstream with verification; upstream keep-alive), and a
#     second nginx server with proxy_cache
#   - the gateway (release build), and a second gateway with the verified-token cache off for
#     the RS256 scenario (every request a different token: no token-cache hit)
# Load: wrk -t1 -c$CONNS pinned to core 1; upstream and proxies share core 0 (taskset), 2 s
# warm-up before each measured window. Prints one table (requests/s, p50, p99, ratios against
# nginx measured in this run, the gateway's RSS, upstream TLS handshakes per 10k requests) and
# writes it to target/bench/compare.md. PROFILE=<part of a scenario name> records a perf
# profile of the gateway during that scenario into target/bench/perf.data.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${CONNS:-32}
threads=${THREADS:-1}
UP=${UP_PORT:-19443} NGX=${NGX_PORT:-19080} NGXC=${NGXC_PORT:-19081} GW=${GW_PORT:-19090} GWR=${GWR_PORT:-19091}

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx; need wrk wrk; need openssl openssl; need taskset util-linux
cargo build --release --quiet
bin=$PWD/target/release/cliniko-gateway
mkdir -p target/bench
w=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $w" >&2; else rm -rf "$w"; fi
}
trap cleanup EXIT

# --- PKI: a throwaway CA and a localhost certificate for the upstream --------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$w/ca.key" -out "$w/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$w/up.key" -out "$w/up.csr" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" >"$w/san.ext"
openssl x509 -req -in "$w/up.csr" -CA "$w/ca.pem" -CAkey "$w/ca.key" -CAcreateserial -days 2 \
  -extfile "$w/san.ext" -out "$w/up.pem" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$w/rs.key" 2>/dev/null
openssl pkey -in "$w/rs.key" -pubout -out "$w/rs.pub"

# --- the upstream's answer: a ~15 KB list with absolute links, like GET /v1/patients ------
python3 - "$UP" >"$w/list.json" <<'PY'
import json, sys
base = f"https://localhost:{sys.argv[1]}/v1"
pts = [{"id": str(836447129235883061 + i), "first_name": f"Ada{i}", "last_name": "Lovelace",
        "date_of_birth": "1941-02-02", "email": f"ada{i}@example.invalid",
        "telehealth_url": f"https://acme.cliniko.com/telehealth/{i}",
        "appointments": {"links": {"self": f"{base}/patients/{836447129235883061 + i}/appointments"}},
        "links": {"self": f"{base}/patients/{836447129235883061 + i}"}} for i in range(36)]
print(json.dumps({"patients": pts, "total_entries": 1200,
  "links": {"self": f"{base}/patients?page=1&per_page=36", "next": f"{base}/patients?page=2&per_page=36"}}))
PY
key="benchkey0000000000000000-au1"
basic=$(printf '%s:' "$key" | base64 -w0)
ua="Gateway Bench (bench@example.invalid)"

# --- nginx: upstream (TLS), plain proxy, proxy_cache --------------------------------------
mkdir -p "$w/cache"
# Workers must read the temp dir; as root, keep them root rather than loosen permissions.
user_line=""; if [ "$(id -u)" = 0 ]; then user_line="user root;"; fi
# Two nginx instances, as in production: the upstream is another machine, so the proxy must
# not share an event loop (and skip context switches) with it. Both run on core 0.
common="$user_line
worker_processes 1;
daemon off;
events { worker_connections 4096; }"
cat >"$w/upstream.conf" <<NGINX
$common
pid $w/upstream.pid;
error_log $w/upstream-error.log warn;
http {
  access_log off;
  log_format conn '\$connection';
  server {
    listen 127.0.0.1:$UP ssl;
    ssl_certificate $w/up.pem; ssl_certificate_key $w/up.key; ssl_protocols TLSv1.3;
    keepalive_requests 1000000;
    access_log $w/up-conns.log conn buffer=64k flush=50ms;
    location / { default_type application/json; etag on; root $w; try_files /list.json =404; }
  }
}
NGINX
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
taskset -c 0 nginx -c "$w/upstream.conf" -p "$w" &
pids+=($!)
taskset -c 0 nginx -c "$w/proxy.conf" -p "$w" &
pids+=($!)

# --- the gateways ---------------------------------------------------------------------------
export CLINIKO_GATEWAY_HMAC_SECRET=bench-hmac-secret-that-is-long-enough-0123456789
export CLINIKO_GATEWAY_MASTER_KEY=$("$bin" keys gen-master-key)
gw_config() { # port, token cache size
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
max_connections = 4096
[auth]
hmac_algorithms = ["HS256"]
token_cache_size = $2
[[auth.public_keys]]
file = "rs.pub"
algorithms = ["RS256"]
[keystore]
path = "keys.json"
[upstream]
user_agent = "$ua"
ca_file = "ca.pem"
[upstream.shards]
au1 = "https://localhost:$UP/v1"
[[cache.rules]]
prefix = "/v1/practitioners"
ttl = "5m"
# The bench user may do anything (the policy check still runs on every request).
[policy]
claims = []
default = ["all"]
[policy.grants.all]
methods = ["*"]
paths = ["/v1"]
# Limits stay on (their cost is part of the path) with budgets no benchmark reaches.
[ratelimit.key]
rate = 1000000
period = "1s"
burst = 1000000
[ratelimit.user]
default = { rate = 1000000, period = "1s", burst = 1000000 }
[log]
format = "json"
level = "warn"
TOML
}
gw_config "$GW" 10000 >"$w/gw.toml"
gw_config "$GWR" 0 >"$w/gw-rs.toml"
printf '%s' "$key" | "$bin" keys add --config "$w/gw.toml" --user bench >/dev/null
taskset -c 0 "$bin" serve --config "$w/gw.toml" >"$w/gw.log" 2>&1 &
gwpid=$!; pids+=($gwpid)
taskset -c 0 "$bin" serve --config "$w/gw-rs.toml" >"$w/gw-rs.log" 2>&1 &
pids+=($!)
hs=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)
"$bin" token mint --sub bench --ttl 2h --signing-key "$w/rs.key" --alg RS256 --count 3000 >"$w/rs-tokens.txt"
for port in $UP $NGX $NGXC $GW $GWR; do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

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
measure() { # name, url, extra wrk args...
  local name=$1 url=$2; shift 2
  taskset -c 1 wrk -t"$threads" -c"$conns" -d2s "$@" "$url" >/dev/null 2>&1
  : >"$w/up-conns.log"
  local prof=""
  if [ -n "${PROFILE:-}" ] && [[ "$name" == *"$PROFILE"* ]]; then
    perf record -q -e cpu-clock -F 999 ${PERF_CALLGRAPH:--g} -p "$gwpid" -o target/bench/perf.data -- sleep "$secs" 2>/dev/null &
    prof=$!
  fi
  local out; out=$(taskset -c 1 wrk -t"$threads" -c"$conns" -d"${secs}s" --latency "$@" "$url")
  if [ -n "$prof" ]; then wait "$prof" || true; fi
  sleep 0.3  # let nginx flush its buffered connection log
  local rps p50 p99 hand bad
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $5} /Socket errors/ {e=$4+$6+$8+$10} END {if (e) print "socket:" e}' <<<"$out" | paste -sd' ')
  if [ -n "$bad" ]; then
    echo "WARNING: $name had failed responses: $bad; a sample:" >&2
    curl -s -i --max-time 5 --cacert "$w/ca.pem" "$@" "$url" 2>&1 | head -5 >&2 || true
  fi
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  hand=$(awk '{n++; c[$1]=1} END {k=0; for (x in c) k++; if (n) printf "%.1f", k*10000/n; else print "-"}' "$w/up-conns.log")
  results+=("$name|$rps|$p50|$p99|$hand")
  printf '.' >&2
}
auth=(-H "Authorization: Bearer $hs")
measure "direct to upstream (ceiling)" "https://localhost:$UP/v1/patients"
measure "nginx proxy" "http://127.0.0.1:$NGX/v1/patients"
measure "gateway, full path, cache miss" "http://127.0.0.1:$GW/v1/patients" "${auth[@]}"
measure "nginx proxy_cache hit" "http://127.0.0.1:$NGXC/v1/practitioners"
measure "gateway cache hit (JWT verified)" "http://127.0.0.1:$GW/v1/practitioners" "${auth[@]}"
measure "gateway, RS256, new token each request" "http://127.0.0.1:$GWR/v1/patients" -s "$w/tokens.lua"
echo >&2
rss=$(ps -o rss= -p "$gwpid" | awk '{printf "%.1f MiB", $1/1024}')

rps_of() {
  for r in "${results[@]}"; do IFS='|' read -r n v _ <<<"$r"; if [ "$n" = "$1" ]; then echo "$v"; fi; done
}
nginx_plain=$(rps_of "nginx proxy"); nginx_cache=$(rps_of "nginx proxy_cache hit")
{
  echo "## compare.sh $(date -u '+%F %H:%M') UTC — $(nproc) cores, ${secs}s per scenario, wrk -t$threads -c$conns on core 1, servers on core 0"
  echo
  echo "| scenario | requests/s | p50 | p99 | vs nginx | upstream TLS handshakes / 10k req |"
  echo "|---|---:|---:|---:|---:|---:|"
  for r in "${results[@]}"; do
    IFS='|' read -r n v p50 p99 hand <<<"$r"
    case "$n" in
      *cache\ hit*) base=$nginx_cache ;;
      *) base=$nginx_plain ;;
    esac
    ratio=$(awk -v a="$v" -v b="$base" 'BEGIN { if (b > 0) printf "%.2fx", a/b; else print "-" }')
    echo "| $n | $v | $p50 | $p99 | $ratio | $hand |"
  done
  echo
  echo "Gateway RSS after the run: $rss. Ratios: cache-hit rows against nginx proxy_cache hit, the rest against nginx proxy."
} | tee target/bench/compare.md
