#!/usr/bin/env bash
# midge as a two-node cluster on NATS, publishers on one node and subscribers on the other,
# next to midge alone without [cluster], with `midge bench` as the load generator.
#
#   bench/cluster.sh                  # every scenario, RUNS (default 1) rounds, 3 s each
#   DURATION=5 RUNS=3 bench/cluster.sh
#   bench/cluster.sh pairs-q1         # a subset, by scenario name (see SCENARIOS below)
#   bench/cluster.sh --table DIR      # print the table again from a finished run's OUT
#
# Setups, each started once for all its runs (memory store, $SYS off, no queue limit,
# admin listener off, logging at warn, the release build of this repository):
#   single    one midge, no [cluster]; publishers and subscribers on it.
#   cluster   one nats-server 2.15.1 (scripts/nats-server.sh install; JetStream on) and two
#             midge nodes "a" and "b" on it; publishers on a, subscribers on b
#             (`midge bench --sub-port`), so every message crosses NATS.
#
# CPU per message is utime+stime (/proc/PID/stat) of the midge process(es) and of
# nats-server, from just before the generator starts to just after it ends (connection
# set-up, warm-up and drain included, so slightly above the generator's own figure for a
# window), divided by the deliveries over the whole run. Nothing is pinned: on a shared
# machine the CPU figures are the robust ones, throughput and latency move with the load
# (printed before and after).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-1}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
# A node acknowledges a SUBSCRIBE before NATS carries its interest to the other node.
SETTLE=${SETTLE:-0.5}
NATS_PORT=${NATS_PORT:-24222}
SINGLE_PORT=${SINGLE_PORT:-21893}
A_PORT=${A_PORT:-21894}
B_PORT=${B_PORT:-21895}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/midge-cluster-bench.XXXXXX")}
mkdir -p "$OUT"

# name | midge bench arguments
SCENARIOS=(
    "pairs-q0|pairs -N 100 -q 0"
    "pairs-q1|pairs -N 100 -q 1"
    "latency-q1-10k|pairs -N 100 -q 1 --rate 10000"
)
SETUPS=(single cluster)

table() {
    python3 - "$@" <<'PY'
import json, statistics, sys, pathlib
out, runs, names = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

def load(name, setup):
    reports = []
    for run in range(1, runs + 1):
        try:
            reports.append(json.loads((out / f"{name}.{setup}.{run}.json").read_text()))
        except Exception as e:
            reports.append({"error": str(e)})
    return reports

def get(r, *path):
    for p in path:
        r = r.get(p) if isinstance(r, dict) else None
    return r

def median(reports, f):
    values = [v for v in (f(r) for r in reports) if isinstance(v, (int, float))]
    return statistics.median(values) if values else None

def per_msg(r, key):
    cpu, n = get(r, "cpu", key), get(r, "delivered_total")
    return cpu / n * 1e6 if isinstance(cpu, (int, float)) and n else None

def fmt(v, digits=0):
    return "n/a" if v is None else f"{v:,.{digits}f}"

print("| scenario | setup | msgs/s | p50 µs | p99 µs | midge CPU µs/msg | NATS CPU µs/msg | total CPU µs/msg | lost / dup / reordered / stalls |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for name in names:
    for setup in ("single", "cluster"):
        rs = load(name, setup)
        errors = [r["error"] for r in rs if "error" in r]
        midge = median(rs, lambda r: per_msg(r, "midge_s"))
        nats = median(rs, lambda r: per_msg(r, "nats_s"))
        total = median(rs, lambda r: per_msg(r, "total_s"))
        health = " / ".join(fmt(median(rs, lambda r: get(r, k))) for k in ("lost", "duplicated", "reordered", "stalls"))
        if errors:
            health += f" (error: {errors[0][:80]})"
        label = "1 node" if setup == "single" else "2 nodes + NATS, cross-node"
        print(f"| {name} | {label} | {fmt(median(rs, lambda r: get(r, 'delivered_per_sec')))} "
              f"| {fmt(median(rs, lambda r: get(r, 'latency_us', 'p50')))} "
              f"| {fmt(median(rs, lambda r: get(r, 'latency_us', 'p99')))} "
              f"| {fmt(midge, 2)} | {fmt(nats, 2) if setup == 'cluster' else '-'} | {fmt(total, 2)} | {health} |")
print()
print(f"Median of {runs} run(s). Load before: {(out / 'load.before').read_text().strip() if (out / 'load.before').exists() else '?'}; "
      f"after: {(out / 'load.after').read_text().strip() if (out / 'load.after').exists() else '?'}")
PY
}

if [[ ${1:-} == --table ]]; then
    dir=${2:?--table DIR}
    read -r -a names <"$dir/scenarios"
    table "$dir" "$(cat "$dir/runs")" "${names[@]}"
    exit 0
fi

selected=()
if (($# == 0)); then
    selected=("${SCENARIOS[@]}")
else
    for want in "$@"; do
        found=
        for s in "${SCENARIOS[@]}"; do
            [[ ${s%%|*} == "$want" ]] && selected+=("$s") && found=1
        done
        [[ -n $found ]] || { echo "unknown scenario $want" >&2; exit 1; }
    done
fi

command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 1; }
NATS_SERVER=${MIDGE_NATS_SERVER:-$("$ROOT/scripts/nats-server.sh" install)}
MIDGE=$ROOT/target/release/midge
if [[ -z ${NO_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release --locked -p midge >&2)
fi
CLK_TCK=$(getconf CLK_TCK)

# utime + stime of the given processes, in seconds (fields 14 and 15 of /proc/PID/stat,
# counted after the command name, which may hold spaces).
cpu_seconds() {
    local ticks=0 pid stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat")
        read -r -a fields <<<"${stat##*) }"
        ticks=$((ticks + fields[11] + fields[12]))
    done
    python3 -c "print($ticks / $CLK_TCK)"
}

# midge_config, wait_for_port
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

MIDGE_PIDS=()
NATS_PID=
PUB_PORT=
SUB_PORT=
start_setup() {
    local setup=$1
    MIDGE_PIDS=() NATS_PID=
    case $setup in
        single)
            midge_config "$OUT/single.toml" "$SINGLE_PORT"
            RUST_LOG=warn "$MIDGE" serve --config "$OUT/single.toml" >"$OUT/single.log" 2>&1 &
            MIDGE_PIDS=($!)
            wait_for_port "$SINGLE_PORT" "${MIDGE_PIDS[0]}"
            PUB_PORT=$SINGLE_PORT SUB_PORT=$SINGLE_PORT ;;
        cluster)
            "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$OUT/js" >"$OUT/nats.log" 2>&1 &
            NATS_PID=$!
            wait_for_port "$NATS_PORT" "$NATS_PID"
            for node in a b; do
                local port=$A_PORT
                [[ $node == b ]] && port=$B_PORT
                midge_config "$OUT/$node.toml" "$port" "$node" "$NATS_PORT"
                RUST_LOG=warn "$MIDGE" serve --config "$OUT/$node.toml" >"$OUT/$node.log" 2>&1 &
                MIDGE_PIDS+=($!)
                wait_for_port "$port" "$!"
            done
            PUB_PORT=$A_PORT SUB_PORT=$B_PORT ;;
    esac
    return 0
}

stop_setup() {
    local pid
    for pid in "${MIDGE_PIDS[@]}" ${NATS_PID:+"$NATS_PID"}; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    MIDGE_PIDS=() NATS_PID=
}
trap 'stop_setup' EXIT

uptime >"$OUT/load.before"
for setup in "${SETUPS[@]}"; do
    if ! start_setup "$setup"; then
        echo "$setup did not start; logs in $OUT" >&2
        exit 1
    fi
    for run in $(seq "$RUNS"); do
        for s in "${selected[@]}"; do
            name=${s%%|*}
            read -r -a args <<<"${s#*|}"
            result="$OUT/$name.$setup.$run.json"
            echo "run $run/$RUNS: $name on $setup" >&2
            midge_before=$(cpu_seconds "${MIDGE_PIDS[@]}")
            nats_before=0
            [[ -n $NATS_PID ]] && nats_before=$(cpu_seconds "$NATS_PID")
            if ! "$MIDGE" bench "${args[@]}" -d "$DURATION" -w "$WARMUP" --settle "$SETTLE" -p "$PUB_PORT" \
                    --sub-port "$SUB_PORT" --topic-prefix "bench-$name-$run" \
                    --json --quiet >"$result.raw" 2>"$result.err"; then
                echo "  failed: $(tail -1 "$result.err")" >&2
                echo "{\"error\": $(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' <"$result.err")}" >"$result"
                continue
            fi
            midge_after=$(cpu_seconds "${MIDGE_PIDS[@]}")
            nats_after=0
            [[ -n $NATS_PID ]] && nats_after=$(cpu_seconds "$NATS_PID")
            python3 - "$result.raw" "$result" "$midge_before" "$midge_after" "$nats_before" "$nats_after" <<'PY'
import json, sys
raw, out, mb, ma, nb, na = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
r = json.load(open(raw))
r["cpu"] = {"midge_s": ma - mb, "nats_s": na - nb, "total_s": (ma - mb) + (na - nb)}
json.dump(r, open(out, "w"), indent=1)
PY
        done
    done
    stop_setup
done
uptime >"$OUT/load.after"

echo "${selected[*]%%|*}" >"$OUT/scenarios"
echo "$RUNS" >"$OUT/runs"
echo "results in $OUT" >&2
table "$OUT" "$RUNS" "${selected[@]%%|*}"
