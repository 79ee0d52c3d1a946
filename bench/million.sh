#!/usr/bin/env bash
# A million idle MQTT connections on one machine, one subscription each, then one message
# fanned out to all of them.
#
#   bench/million.sh                    # TOTAL=1000000
#   TOTAL=100000 bench/million.sh       # smaller
#   BROKER=mosquitto bench/million.sh   # the same with Mosquitto (bridged, see below)
#   bench/million.sh --table DIR        # the summary again from a finished run's OUT
#
# MIDGE names a midge binary to use instead of building the release one, MIDGE_NATS_SERVER
# a nats-server; BASE_PORT.. (one per node) and NATS_PORT must be free.
#
# A process here may hold at most `ulimit -Hn` open files (20,000 in the container this was
# written in, which lacks CAP_SYS_RESOURCE to raise it), and so at most that many sockets.
# Where the limit is high enough (NODES=1, with ulimit -Hn above TOTAL), one midge holds
# them all. Otherwise the connections are spread over a midge cluster on this machine:
# NODES nodes (default: as many as PER_NODE connections per node need) on one nats-server
# 2.15.1 with JetStream (scripts/nats-server.sh install), every node a process of its own
# with its own port, configured as bench/cluster.sh configures its nodes (bench/lib.sh:
# memory store, $SYS off, no queue limit, admin off), logging at warn, and NODE_THREADS
# (default 1) runtime workers. Each node gets its connections from a
# `midge bench conn --conn-fanout --fanout-ready-file` process of its own (also under the
# open-files limit), all started at once, all subscribing to one topic. Once every
# generator says all its connections are up and waiting, the node's RSS is read, and
# `midge pub` publishes one QoS 0 message to that topic on node 0: it reaches the other
# nodes through NATS, and every node delivers it to its own connections.
#
# BROKER=mosquitto runs the system's Mosquitto the same way: it has no cluster, so the nodes
# are Mosquitto processes (settings as bench/compare.sh gives it), node 0 the hub and every
# other one bridged to it (`topic million/# in 0`), Mosquitto's own way of spreading one
# topic over processes.
#
# Reported: connections up and the connect rate over the whole ramp (first CONNECT of any
# generator to the last SUBACK of any), RSS of the midge processes before and after (per
# connection: the growth over the connections; and all the nodes' RSS over them), the
# nats-server's RSS, the machine's memory in use (MemTotal - MemAvailable, kernel sockets
# included) before and after, and the fan-out: from the moment `midge pub` was started to
# the last receipt in any generator, which includes pub's own connect (its duration is
# printed beside it), with the CPU time the brokers (and nats-server) and the whole machine
# spent meanwhile. Every connection must receive the message and none may be closed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOTAL=${TOTAL:-1000000}
PER_NODE=${PER_NODE:-19000}
NODE_THREADS=${NODE_THREADS:-1}
BASE_PORT=${BASE_PORT:-25000}
NATS_PORT=${NATS_PORT:-24500}
# Longest wait for the message once a generator's connections are up (it waits for the
# slowest generator's ramp too).
WAIT=${WAIT:-900}
SETTLE=${SETTLE:-2}
BROKER=${BROKER:-midge}
[[ $BROKER == midge || $BROKER == mosquitto ]] || { echo "million: BROKER is midge or mosquitto" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/midge-million.XXXXXX")}

summary() {
    python3 - "$1" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
meta = json.loads((out / "meta.json").read_text())
reports, failed = [], []
for i in range(meta["nodes"]):
    try:
        reports.append(json.loads((out / f"bench.{i}.json").read_text()))
    except Exception as e:
        failed.append(f"generator {i}: {e}")
count = sum(r["connections"]["count"] for r in reports)
received = sum(r["fanout"]["received"] for r in reports)
start = min(r["connections"]["started_unix"] for r in reports)
up = max(r["connections"]["up_unix"] for r in reports)
last = max((r["fanout"]["last_unix"] for r in reports if r["fanout"]["last_unix"]), default=None)
p99 = max(r["connections"]["handshake_us"]["p99"] for r in reports)
kib = lambda key: sum(meta[key])
before, after = kib("rss_before"), kib("rss_after")
mib = lambda k: k / 1024
broker = meta["broker"]
clustered = broker == "midge" and meta["nodes"] > 1
if broker == "midge":
    print(f"midge {meta['rev']}, {meta['nodes']} node(s), {meta['threads']} worker(s) each, {meta['date']}")
else:
    print(f"{meta['version']}, {meta['nodes']} process(es), bridged to the first, {meta['date']}")
print(f"connections up        {count:,} of {meta['total']:,} ({len(failed)} generator(s) failed)")
print(f"connect rate          {count / (up - start):,.0f}/s over the whole ramp ({up - start:.1f} s); worst generator's handshake p99 {p99 / 1000:.1f} ms")
print(f"{broker + ' RSS':<22}{mib(before):,.0f} MiB before, {mib(after):,.0f} MiB after: {(after - before) / count:.2f} KiB per connection grown, {after / count:.2f} KiB per connection in all")
if clustered:
    print(f"nats-server RSS       {mib(meta['nats_before']):,.0f} MiB before, {mib(meta['nats_after']):,.0f} MiB after")
print(f"machine memory used   {mib(meta['used_before']):,.0f} MiB before, {mib(meta['used_after']):,.0f} MiB after: {(meta['used_after'] - meta['used_before']) / count:.2f} KiB per connection (brokers, generators and both ends' kernel sockets)")
if last is not None:
    took = last - meta["published_unix"]
    print(f"fan-out               {received:,} of {count:,} received, the last {took:.2f} s after pub started (pub itself took {meta['pub_seconds']:.3f} s)")
    # From the sample before pub started to the first one after the last receipt.
    samples = [[float(x) for x in line.split()] for line in (out / "cpu.txt").read_text().splitlines() if len(line.split()) == 5]
    first = max((s for s in samples if s[0] <= meta["published_unix"]), key=lambda s: s[0], default=samples[0])
    end = min((s for s in samples if s[0] >= last), key=lambda s: s[0], default=samples[-1])
    hz = meta["hz"]
    d = [(b - a) / hz for a, b in zip(first[1:], end[1:])]
    nats = f", nats-server {d[1]:.2f} s" if clustered else ""
    print(f"CPU meanwhile         {broker} {d[0]:.2f} s ({d[0] * 1e6 / count:.1f} µs a delivery){nats}, the machine {d[2]:.2f} of {d[3]:.2f} core-seconds ({end[0] - first[0]:.2f} s of samples)")
else:
    print(f"fan-out               {received:,} of {count:,} received")
for f in failed:
    print("FAILED", f)
ok = not failed and count == meta["total"] and received == count
sys.exit(0 if ok else 1)
PY
}

if [[ ${1:-} == --table ]]; then
    summary "${2:?--table DIR}"
    exit
fi

HARD=$(ulimit -Hn)
ulimit -n "$HARD"
if [[ -z ${NODES:-} ]]; then
    if (( PER_NODE > HARD - 500 )); then
        PER_NODE=$(( HARD - 500 ))
    fi
    NODES=$(( (TOTAL + PER_NODE - 1) / PER_NODE ))
fi
(( TOTAL / NODES + 100 < HARD )) || {
    echo "million: $((TOTAL / NODES)) connections per process do not fit in the open-files limit ($HARD); set more NODES" >&2
    exit 1
}

if [[ -z ${MIDGE:-} ]]; then
    MIDGE=${CARGO_TARGET_DIR:-$ROOT/target}/release/midge
    echo "building midge (release)..." >&2
    cargo build --release -p midge --manifest-path "$ROOT/Cargo.toml" >&2
fi
NATS_SERVER=
if [[ $BROKER == midge ]] && (( NODES > 1 )); then
    NATS_SERVER=${MIDGE_NATS_SERVER:-$("$ROOT/scripts/nats-server.sh" install)}
fi
mkdir -p "$OUT"
rm -rf "$OUT"/ready.* "$OUT"/bench.* "$OUT"/node.* "$OUT/cpu.txt" "$OUT/meta.json" "$OUT/js"
echo "million: $TOTAL connections over $NODES $BROKER node(s) on ports $BASE_PORT.., results in $OUT" >&2

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# midge_config, mosquitto_config, wait_for_port
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
used() { awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t - a}' /proc/meminfo; }

NATS_PID=
if [[ -n $NATS_SERVER ]]; then
    "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/js" >"$OUT/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    wait_for_port "$NATS_PORT" "$NATS_PID" || { echo "million: nats-server did not start ($OUT/nats.log)" >&2; exit 1; }
fi

NODE_PIDS=()
for i in $(seq 0 $((NODES - 1))); do
    port=$((BASE_PORT + i))
    if [[ $BROKER == mosquitto ]]; then
        mosquitto_config "$OUT/node.$i.conf" "$port"
        if (( i > 0 )); then
            cat >>"$OUT/node.$i.conf" <<CONF

connection hub
address 127.0.0.1:$BASE_PORT
remote_clientid million-bridge-$i
bridge_protocol_version mqttv311
cleansession true
restart_timeout 1
topic million/# in 0
CONF
        fi
        mosquitto -c "$OUT/node.$i.conf" >"$OUT/node.$i.log" 2>&1 &
        NODE_PIDS+=($!)
        PIDS+=($!)
        continue
    fi
    midge_config "$OUT/node.$i.toml" "$port" ${NATS_SERVER:+"m$i" "$NATS_PORT"}
    TOKIO_WORKER_THREADS=$NODE_THREADS RUST_LOG=warn "$MIDGE" serve --config "$OUT/node.$i.toml" \
        >"$OUT/node.$i.log" 2>&1 &
    NODE_PIDS+=($!)
    PIDS+=($!)
done
for i in "${!NODE_PIDS[@]}"; do
    wait_for_port $((BASE_PORT + i)) "${NODE_PIDS[$i]}" ||
        { echo "million: node $i does not listen on $((BASE_PORT + i)) ($OUT/node.$i.log)" >&2; exit 1; }
done
if [[ $BROKER == mosquitto ]] && (( NODES > 1 )); then
    # Every bridge connected to the hub (established TCP connections to its port): a
    # bridge that started before the hub listened tries again after restart_timeout.
    hub=$(printf ':%04X' "$BASE_PORT")
    for _ in $(seq 300); do
        bridges=$(awk -v hub="$hub" '$3 ~ hub "$" && $4 == "01"' /proc/net/tcp | wc -l)
        (( bridges >= NODES - 1 )) && break
        sleep 0.1
    done
    (( bridges >= NODES - 1 )) ||
        { echo "million: $bridges of $((NODES - 1)) bridges connected to the hub" >&2; exit 1; }
fi
sleep 1

rss_list() {
    local sep="" pid
    for pid in "${NODE_PIDS[@]}"; do printf '%s%s' "$sep" "$(rss "$pid")"; sep=,; done
}
RSS_BEFORE=$(rss_list)
NATS_BEFORE=$([[ -n $NATS_PID ]] && rss "$NATS_PID" || echo 0)
USED_BEFORE=$(used)

GEN_PIDS=()
for i in $(seq 0 $((NODES - 1))); do
    count=$(( TOTAL / NODES + (i < TOTAL % NODES ? 1 : 0) ))
    # Source addresses of its own for each generator, at most 8,000 connections on each:
    # the kernel looks for a free port by scanning, and a scan through a nearly full range
    # (connect() takes even ports first, bind() odd ones, about 14,000 of each) made the
    # ramp crawl at 750,000 connections when all came from 127.0.0.1.
    sources=$(( (count + 7999) / 8000 ))
    "$MIDGE" bench conn -C "$count" --conn-fanout --fanout-ready-file "$OUT/ready.$i" \
        --conn-source-first "127.$((10 + i / 256)).$((i % 256)).1" --conn-sources "$sources" \
        --hold "$WAIT" -p $((BASE_PORT + i)) --broker-pid "${NODE_PIDS[$i]}" \
        --topic-prefix million --json --quiet >"$OUT/bench.$i.json" 2>"$OUT/bench.$i.err" &
    GEN_PIDS+=($!)
    PIDS+=($!)
done

started=$(date +%s)
while :; do
    ready=$(find "$OUT" -maxdepth 1 -name 'ready.*' | wc -l)
    (( ready == NODES )) && break
    for i in "${!GEN_PIDS[@]}"; do
        if [[ ! -e $OUT/ready.$i ]] && ! kill -0 "${GEN_PIDS[$i]}" 2>/dev/null; then
            echo "million: generator $i ended before its connections were up:" >&2
            cat "$OUT/bench.$i.err" >&2
            exit 1
        fi
    done
    echo "[$(( $(date +%s) - started )) s] $ready of $NODES generators up; $(awk '/^TCP:/ {print $3}' /proc/net/sockstat) TCP sockets in use" >&2
    sleep 5
done
RSS_AFTER=$(rss_list)
NATS_AFTER=$([[ -n $NATS_PID ]] && rss "$NATS_PID" || echo 0)
USED_AFTER=$(used)
echo "million: all $NODES generators up after $(( $(date +%s) - started )) s; publishing in $SETTLE s" >&2
# A node acknowledges a SUBSCRIBE before NATS has its interest.
sleep "$SETTLE"
# CPU time of the brokers, of nats-server and of the machine every 50 ms from here on: the
# generators end (and reset their connections, which costs the brokers too) only after
# the last receipt, so the fan-out's share is read at that receipt.
python3 - "$OUT/cpu.txt" "${NATS_PID:-0}" "${NODE_PIDS[@]}" <<'PY' &
import sys, time
out, nats, nodes = sys.argv[1], int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
with open(out, "w") as f:
    while True:
        with open("/proc/stat") as st:
            cpu = [int(x) for x in st.readline().split()[1:8]]
        busy, total = sum(cpu) - cpu[3] - cpu[4], sum(cpu)
        try:
            line = f"{time.time():.3f} {sum(ticks(p) for p in nodes)} {ticks(nats) if nats else 0} {busy} {total}\n"
        except OSError:
            break
        f.write(line)
        f.flush()
        time.sleep(0.05)
PY
SAMPLER=$!
PIDS+=("$SAMPLER")
until [[ -s $OUT/cpu.txt ]]; do sleep 0.05; done
t0=$(date +%s.%N)
"$MIDGE" pub -h 127.0.0.1 -p "$BASE_PORT" -t million/conn/all -m fan-out
t1=$(date +%s.%N)
failed=0
for pid in "${GEN_PIDS[@]}"; do wait "$pid" || failed=1; done
kill "$SAMPLER" 2>/dev/null || true
VERSION=midge
if [[ $BROKER == mosquitto ]]; then VERSION=$({ mosquitto -h 2>&1 || true; } | head -1); fi

python3 - "$OUT/meta.json" <<PY
import json, sys
json.dump({
    "broker": "$BROKER", "version": "$VERSION",
    "total": $TOTAL, "nodes": $NODES, "threads": $NODE_THREADS,
    "rev": "$(git -C "$ROOT" rev-parse --short HEAD)", "date": "$(date -u +%FT%TZ)",
    "rss_before": [$RSS_BEFORE], "rss_after": [$RSS_AFTER],
    "nats_before": $NATS_BEFORE, "nats_after": $NATS_AFTER,
    "used_before": $USED_BEFORE, "used_after": $USED_AFTER,
    "published_unix": $t0, "pub_seconds": $t1 - $t0,
    "hz": $(getconf CLK_TCK),
}, open(sys.argv[1], "w"), indent=1)
PY
summary "$OUT" || failed=1
if (( failed )); then
    echo "million: FAILED (generators' errors in $OUT/bench.*.err)" >&2
    exit 1
fi
