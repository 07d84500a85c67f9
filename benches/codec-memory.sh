#!/usr/bin/env bash
# Memory per compressed answer in flight: the gateway's RSS while N callers each hold a large
# answer half-read, per coding (none, gzip, br, zstd). Not a test.
# Usage: [LEVEL=1] [CODINGS="none gzip br zstd"] benches/codec-memory.sh [N ...]   (default 200 500)
#
# Same set-up as compare.sh (benches/lib.sh), the upstream gzipping like Cliniko (UP_GZIP): the
# answer is a 40 MiB export (/v1/invoices/export, never cached), so every held answer has an
# upstream stream, its gzip decoder, the link rewriter and, for a coding, its encoder mid-stream.
# For each coding and N, a fresh release gateway (`[compression]` as shipped, level 1):
#   1. warmed with two small requests, then its RSS is the baseline;
#   2. N callers (one asyncio process on core 1) each send the request with that
#      Accept-Encoding on a socket with a 4 KiB receive buffer, read the first 16 KiB and stop
#      reading: the gateway's writes block and its encoder stops mid-answer;
#   3. with all N held, RSS is sampled every 0.2 s for 2 s; the peak minus the baseline, over the
#      answers held (the gateway's http_requests_in_flight: N unless some failed; an answer that
#      finished into the kernel's buffers would not count, nor hold an encoder), is the cost of
#      one held answer. Then the callers close.
# The coding's cost is its row minus the `none` row of the same N (what every held answer costs
# anyway: the upstream TLS connection, hyper's buffers, the decoder, the rewriter).
# Limits set so the bench hits none of them: upstream.max_in_flight_per_user 1000 (lib.sh; the
# maximum), server.max_connections 4096 (lib.sh), server.send_timeout 120s (the hold is ~5 s),
# upstream.connect_timeout 30s (hundreds of TLS handshakes to an nginx sharing core 0 with the
# gateway and its streams took over the default 5 s: 502s).
# Failed or wrongly coded answers are reported, never counted silently.
set -euo pipefail
cd "$(dirname "$0")/.."
counts=("${@:-200 500}")
read -ra counts <<<"${counts[*]}"
UP=${UP_PORT:-19753} GW=${GW_PORT:-19392} ADMIN=${ADMIN_PORT:-19393} UP_GZIP=1
source "$(dirname "$0")/lib.sh"
need curl curl
export CLINIKO_GATEWAY_ADMIN_TOKEN=bench-admin-token-0123456789abcdef
wait_ports "$UP"

# The export, varied records this time: lib.sh's repeats one record and gzips 18x, so its whole
# coded answer (~1.5 MiB) fits in the kernel's socket buffers and the encoder finishes. These
# gzip ~2.8x (~14 MiB), far more than the kernel takes (~4 MiB send buffer at most). nginx reads
# the file per request, so it is replaced in place.
python3 - >"$w/big.json" <<'PY'
import random, sys
rnd = random.Random(16)
base = "https://api.au1.cliniko.com/v1"  # what Cliniko writes, whichever port served it
words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 9)))
         for _ in range(4000)]
out = sys.stdout
out.write('{"patients":[')
size = n = 0
while size < 40 * 1024 * 1024:
    pid = rnd.randrange(10**17, 10**18)
    rec = ('%s{"id":"%d","first_name":"%s","last_name":"%s","email":"%s@%s.invalid",'
           '"notes":"%s","links":{"self":"%s/patients/%d"}}') % (
        "," if n else "", pid, rnd.choice(words).title(), rnd.choice(words).title(),
        rnd.choice(words), rnd.choice(words), " ".join(rnd.choices(words, k=12)), base, pid)
    out.write(rec)
    size += len(rec)
    n += 1
out.write('],"total_entries":%d}' % n)
PY

metric() { curl -s -H "Authorization: Bearer $CLINIKO_GATEWAY_ADMIN_TOKEN" \
  "http://127.0.0.1:$ADMIN/metrics" | awk -v m="cliniko_gateway_$1" '$1 == m {print $2}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# The callers: open N connections, read a little of each answer, report, hold until released.
cat >"$w/hold.py" <<'PY'
import asyncio, os, socket, sys
port, n, coding, token, ready, release = sys.argv[1:7]
n = int(n)
head = (f"GET /v1/invoices/export HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        + (f"Accept-Encoding: {coding}\r\n" if coding != "none" else "") + "\r\n").encode()

async def one(gate):
    async with gate:  # connect a few at a time: no listen-backlog overflow
        s = socket.socket()
        # Small before connect, so the window the gateway sees stays small.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", int(port)))
        r, wr = await asyncio.open_connection(sock=s)
        wr.write(head)
        got = b""
        while len(got) < 16384:
            chunk = await r.read(16384 - len(got))
            if not chunk:
                break
            got += chunk
    hdr = got.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    status = hdr.split(" ", 2)[1] if " " in hdr else "?"
    enc = next((l.split(":", 1)[1].strip() for l in hdr.split("\r\n")
                if l.startswith("content-encoding:")), "none")
    return wr, status, enc

async def main():
    gate = asyncio.Semaphore(32)
    held = await asyncio.gather(*(one(gate) for _ in range(n)))
    bad = [(st, enc) for _, st, enc in held if st != "200" or enc != coding]
    with open(ready, "w") as f:
        f.write(f"{len(bad)} {bad[:3]}\n")
    while not os.path.exists(release):
        await asyncio.sleep(0.05)
    for wr, _, _ in held:
        wr.transport.abort()

asyncio.run(main())
PY

printf "%-7s %5s %14s %14s %12s %14s %16s\n" coding N "baseline MiB" "held peak MiB" "delta MiB" "answers held" "KiB per answer"
for n in "${counts[@]}"; do
  for coding in ${CODINGS:-none gzip br zstd}; do
    gw_config "$GW" 10000 >"$w/gw.toml"
    add_bench_key "$w/gw.toml"
    CLINIKO_GATEWAY__SERVER__SEND_TIMEOUT=120s CLINIKO_GATEWAY__COMPRESSION__LEVEL=${LEVEL:-1} \
      CLINIKO_GATEWAY__UPSTREAM__CONNECT_TIMEOUT=30s \
      CLINIKO_GATEWAY__ADMIN__LISTEN="127.0.0.1:$ADMIN" \
      taskset -c 0 "$bin" serve --config "$w/gw.toml" >"$w/gw-$coding-$n.log" 2>&1 &
    gw=$!; pids+=($gw)
    wait_ports "$GW" "$ADMIN"
    token=$("$bin" token mint --config "$w/gw.toml" --sub bench --ttl 2h)
    for _ in 1 2; do
      curl -s -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$GW/v1/practitioners"
    done
    sleep 1
    base=$(rss_kib "$gw")
    rm -f "$w/ready" "$w/release"
    taskset -c 1 python3 "$w/hold.py" "$GW" "$n" "$coding" "$token" "$w/ready" "$w/release" &
    holder=$!; pids+=($holder)
    while [ ! -e "$w/ready" ]; do sleep 0.1; done
    read -r bad rest <"$w/ready"
    if [ "$bad" != 0 ]; then echo "WARNING: $bad answers failed or not $coding: $rest" >&2; fi
    sleep 1  # the last writes block
    peak=0
    for _ in $(seq 10); do
      r=$(rss_kib "$gw"); if [ "$r" -gt "$peak" ]; then peak=$r; fi; sleep 0.2
    done
    flying=$(metric http_requests_in_flight)
    touch "$w/release"; wait "$holder" 2>/dev/null || true
    printf "%-7s %5d %14.1f %14.1f %12.1f %14s %16.0f\n" "$coding" "$n" \
      "$(awk -v k="$base" 'BEGIN {print k/1024}')" "$(awk -v k="$peak" 'BEGIN {print k/1024}')" \
      "$(awk -v a="$peak" -v b="$base" 'BEGIN {print (a-b)/1024}')" "$flying" \
      "$(awk -v a="$peak" -v b="$base" -v n="$flying" 'BEGIN {print (a-b)/n}')"
    kill "$gw"; wait "$gw" 2>/dev/null || true
  done
done
echo "($(date -u +%F) $(nproc) cores; a 40 MiB export per answer, the first 16 KiB read; compression.level ${LEVEL:-1}; callers on core 1, gateway + upstream on core 0)"
