# Shared set-up for the benchmark scripts (sourced, not run): tools, a release build, a work
# dir, a throwaway PKI, the upstream (nginx over TLS 1.3 serving Cliniko-style JSON with
# absolute links; gzip when UP_GZIP is set) and gateway configs. Expects UP (upstream port) to
# be set.

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx; need wrk wrk; need openssl openssl; need taskset util-linux
# GATEWAY_BIN=<path>: run that binary instead of building this tree (to compare two builds).
if [ -z "${GATEWAY_BIN:-}" ]; then cargo build --release --quiet; fi
bin=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/cliniko-gateway}
mkdir -p target/bench
w=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true  # nothing writes into what is removed next
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
# Links name Cliniko's own host, as real answers do, so every gateway (h1 or h2 upstream port)
# rewrites the same 74 links.
page() { # records per page: a list like Cliniko's, every record with its links
  python3 - "$1" <<'PY'
import json, sys
n = int(sys.argv[1])
base = "https://api.au1.cliniko.com/v1"  # what Cliniko writes, whichever port served it
pts = [{"id": str(836447129235883061 + i), "first_name": f"Ada{i}", "last_name": "Lovelace",
        "date_of_birth": "1941-02-02", "email": f"ada{i}@example.invalid",
        "telehealth_url": f"https://acme.cliniko.com/telehealth/{i}",
        "appointments": {"links": {"self": f"{base}/patients/{836447129235883061 + i}/appointments"}},
        "links": {"self": f"{base}/patients/{836447129235883061 + i}"}} for i in range(n)]
print(json.dumps({"patients": pts, "total_entries": 1200,
  "links": {"self": f"{base}/patients?page=1&per_page={n}", "next": f"{base}/patients?page=2&per_page={n}"}}))
PY
}
page 36 >"$w/list.json"
# The same records, 100 to a page (the largest page Cliniko sends), for bytes-per-page figures.
page 100 >"$w/page100.json"
# A wrk script asking for a new URL each request: every request a cache miss that is stored.
# The URL carries the run's start second and the thread's number before the counter: a bare
# counter repeats the warm-up run's URLs (hits for its first seconds) and, with -t2 or more,
# every other thread's.
cat >"$w/unique.lua" <<'LUA'
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end
function init()
  prefix = "/v1/practitioners?miss=" .. os.time() .. "-" .. thread_no .. "-"
  counter = 0
end
request = function()
  counter = counter + 1
  return wrk.format(nil, prefix .. counter)
end
LUA
key="benchkey0000000000000000-au1"
basic=$(printf '%s:' "$key" | base64 -w0)
ua="Gateway Bench (bench@example.invalid)"


# A small answer (~1.5 KB, like /v1/businesses) for filling the cache with many entries.
python3 - "$UP" >"$w/small.json" <<'PY'
import json, sys
base = "https://api.au1.cliniko.com/v1"  # what Cliniko writes, whichever port served it
bs = [{"id": str(636447129235883061 + i), "business_name": f"Clinic {i}",
       "links": {"self": f"{base}/businesses/{636447129235883061 + i}"}} for i in range(8)]
print(json.dumps({"businesses": bs, "total_entries": 8, "links": {"self": f"{base}/businesses"}}))
PY
# A 25 MiB export streamed through (not cached): many records, every one with a link.
python3 - "$UP" >"$w/big.json" <<'PY'
import sys
base = "https://api.au1.cliniko.com/v1"  # what Cliniko writes, whichever port served it
out = sys.stdout
out.write('{"patients":[')
n = 25 * 1024 * 1024 // 95
for i in range(n):
    out.write(('' if i == 0 else ',') + '{"id":"%d","first_name":"Ada","links":{"self":"%s/patients/%d"}}' % (i, base, i))
out.write('],"total_entries":%d}' % n)
PY

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
    ${UP2:+listen 127.0.0.1:$UP2 ssl http2;}
    ssl_certificate $w/up.pem; ssl_certificate_key $w/up.key; ssl_protocols TLSv1.3;
    keepalive_requests 1000000;
    access_log $w/up-conns.log conn buffer=64k flush=50ms;
    location / { default_type application/json; etag on; root $w; try_files /list.json =404; }
    location /v1/businesses { default_type application/json; etag on; root $w; try_files /small.json =404; }
    location /v1/bookings { default_type application/json; etag on; root $w; try_files /page100.json =404; }
    # UP_GZIP=1: gzip for clients that ask, as Cliniko does (nginx's default level, 1).
    ${UP_GZIP:+gzip on; gzip_types application/json; gzip_min_length 256;}
    location /v1/invoices/export { default_type application/json; root $w; try_files /big.json =404; }
  }
}
NGINX
taskset -c 0 nginx -c "$w/upstream.conf" -p "$w" &
uppid=$!; pids+=($uppid)

# --- the gateways ---------------------------------------------------------------------------
export CLINIKO_GATEWAY_HMAC_SECRET=bench-hmac-secret-that-is-long-enough-0123456789
export CLINIKO_GATEWAY_MASTER_KEY=$("$bin" keys gen-master-key)
gw_config() { # port, token cache size[, upstream port (default $UP)]
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
# wrk's connections are one user: the per-user in-flight cap (default 16) must not refuse them.
max_in_flight_per_user = 1000
[upstream.shards]
au1 = "https://localhost:${3:-$UP}/v1"
[[cache.rules]]
prefix = "/v1/practitioners"
ttl = "5m"
[[cache.rules]]
prefix = "/v1/businesses"
ttl = "1h"
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
# Stores the bench key for user `bench` in the key store named by the config $1.
add_bench_key() { printf '%s' "$key" | "$bin" keys add --config "$1" --user bench >/dev/null; }
# CPU time (clock ticks, user + system) of the processes given and their children; with
# SYS_ONLY=1, system time alone (loopback TCP is kernel work, charged as system time).
cpu_ticks() {
  local t=0 p
  for p in "$@" $(pgrep -P "$(printf '%s,' "$@" | sed 's/,$//')" 2>/dev/null); do
    t=$((t + $(awk -v s="${SYS_ONLY:-}" '{print s ? $15 : $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
# Waits until every port given accepts connections.
wait_ports() {
  for port in "$@"; do
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  done
}
