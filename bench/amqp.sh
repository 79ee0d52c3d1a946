#!/usr/bin/env bash
# AMQP 0-9-1 <-> MQTT through amq.topic: midge against RabbitMQ (Debian's rabbitmq-server with
# its MQTT plugin), side by side, with `midge bench amqp-mqtt` / `mqtt-amqp` as the load
# generator, at fixed rates: broker CPU per delivered message and p99 latency.
#
#   bench/amqp.sh                        # every scenario, 3 runs each (about 4 minutes)
#   QUICK=1 RUNS=1 bench/amqp.sh         # a smoke run (about 1 minute)
#   RATE=2000 bench/amqp.sh amqp-mqtt-q1 # a subset, at another total rate
#   bench/amqp.sh --table DIR            # print the table again from a finished run's OUT
#
# Both brokers run for the whole script, each pinned to one core (BROKER_CPU, default 0),
# the generator on another (GEN_CPU, default 1); every scenario runs RUNS times (default 3),
# brokers interleaved, and the median is reported. A broker's CPU is read from
# /proc/PID/stat (utime + stime) at the edges of the measured window. Output: a markdown
# table on stdout; every run's JSON report is kept in OUT.
#
# Brokers:
#   midge     this repository's release build; an MQTT and an AMQP listener on loopback,
#             memory store, $SYS off, no queue limit, logging at warn.
#   rabbitmq  tests/interop/amqp/rabbitmq.sh: a throwaway node with rabbitmq_mqtt and
#             rabbitmq_web_mqtt on loopback, otherwise defaults (the Erlang VM's CPU is
#             the beam.smp process's). scripts/test-deps.sh installs it.
# MQTT 3.1.1 on both: RabbitMQ 3.10's MQTT plugin speaks no MQTT 5.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
RATE=${RATE:-5000}
BROKER_CPU=${BROKER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
MIDGE_PORT=${MIDGE_PORT:-21893}
MIDGE_AMQP_PORT=${MIDGE_AMQP_PORT:-25692}
RABBIT_PORT=${RABBIT_PORT:-21894}
RABBIT_AMQP_PORT=${RABBIT_AMQP_PORT:-25693}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/midge-amqp-bench.XXXXXX")}
mkdir -p "$OUT"
if [[ -n "${QUICK:-}" ]]; then
    TIMING=(-d 2 -w 0.5)
else
    TIMING=(-d 5 -w 1)
fi

# name | midge bench arguments (the rate is added from RATE)
SCENARIOS=(
    "amqp-mqtt-q0|amqp-mqtt -P 10 -S 2 -q 0 -V 311"
    "amqp-mqtt-q1|amqp-mqtt -P 10 -S 2 -q 1 -V 311"
    "mqtt-amqp-q0|mqtt-amqp -P 10 -S 2 -q 0 -V 311"
    "mqtt-amqp-q1|mqtt-amqp -P 10 -S 2 -q 1 -V 311"
)

# The table code is shared with bench/compare.sh.
table() {
    python3 "$ROOT/bench/table.py" amqp "$@"
}

if [[ ${1:-} == --table ]]; then
    dir=${2:?--table DIR}
    # shellcheck disable=SC2046
    table "$dir" "$(cat "$dir/runs")" $(cat "$dir/scenarios")
    exit 0
fi

command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] ||
    { echo "rabbitmq-server not found; install it with scripts/test-deps.sh" >&2; exit 1; }

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MIDGE=${MIDGE:-$TARGET/release/midge}
if [[ -z "${NO_BUILD:-}" ]]; then
    echo "building midge (release)..." >&2
    cargo build --release -p midge --manifest-path "$ROOT/Cargo.toml" >&2
fi

selected=()
if (( $# > 0 )); then
    for want in "$@"; do
        found=
        for s in "${SCENARIOS[@]}"; do
            [[ ${s%%|*} == "$want" ]] && selected+=("$s") && found=1
        done
        [[ -n $found ]] || { echo "unknown scenario $want; known: $(printf '%s ' "${SCENARIOS[@]%%|*}")" >&2; exit 1; }
    done
else
    selected=("${SCENARIOS[@]}")
fi

# wait_for_port
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

cat >"$OUT/midge.toml" <<CONF
[[listener]]
bind = "127.0.0.1:$MIDGE_PORT"

[[listener]]
bind = "127.0.0.1:$MIDGE_AMQP_PORT"
protocol = "amqp"

[auth]
allow_anonymous = true

[storage]
backend = "memory"

[sys]
interval_secs = 0

[mqtt]
max_queued_messages = 0
CONF

MIDGE_PID=
RABBIT_DIR="$OUT/rabbitmq"
stop_brokers() {
    [[ -n $MIDGE_PID ]] && { kill -TERM "$MIDGE_PID" 2>/dev/null || true; wait "$MIDGE_PID" 2>/dev/null || true; }
    "$ROOT/tests/interop/amqp/rabbitmq.sh" stop "$RABBIT_DIR" >/dev/null 2>&1 || true
}
trap stop_brokers EXIT

RUST_LOG=warn taskset -c "$BROKER_CPU" "$MIDGE" serve -c "$OUT/midge.toml" >"$OUT/midge.log" 2>&1 &
MIDGE_PID=$!
wait_for_port "$MIDGE_AMQP_PORT" "$MIDGE_PID" || { echo "midge did not start; see $OUT/midge.log" >&2; exit 1; }
echo "starting RabbitMQ (5-20 s)..." >&2
ready=$(taskset -c "$BROKER_CPU" "$ROOT/tests/interop/amqp/rabbitmq.sh" start "$RABBIT_DIR" \
    "$RABBIT_AMQP_PORT" "$RABBIT_PORT" "$((RABBIT_PORT + 1))" "$((RABBIT_AMQP_PORT + 1))")
RABBIT_PID=${ready#ready }

uptime >"$OUT/load.before"
for run in $(seq "$RUNS"); do
    for s in "${selected[@]}"; do
        name=${s%%|*}
        read -r -a args <<<"${s#*|}"
        for broker in midge rabbitmq; do
            if [[ $broker == midge ]]; then
                ports=(-p "$MIDGE_PORT" --amqp-port "$MIDGE_AMQP_PORT") pid=$MIDGE_PID
            else
                ports=(-p "$RABBIT_PORT" --amqp-port "$RABBIT_AMQP_PORT") pid=$RABBIT_PID
            fi
            result="$OUT/$name.$broker.$run.json"
            echo "run $run/$RUNS: $name on $broker" >&2
            if ! taskset -c "$GEN_CPU" "$MIDGE" bench "${args[@]}" --rate "$RATE" "${TIMING[@]}" \
                    "${ports[@]}" --topic-prefix "b$run" --broker-pid "$pid" --json --quiet \
                    >"$result" 2>"$result.err"; then
                echo "  failed: $(tail -1 "$result.err")" >&2
                echo "{\"error\": $(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' <"$result.err")}" >"$result"
            fi
        done
    done
done

echo "${selected[*]%%|*}" >"$OUT/scenarios"
echo "$RUNS" >"$OUT/runs"
uptime >"$OUT/load.after"
table "$OUT" "$RUNS" "${selected[@]%%|*}"
