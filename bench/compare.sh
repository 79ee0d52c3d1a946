#!/usr/bin/env bash
# midge against Mosquitto, side by side, with `midge bench` as the load generator.
#
#   bench/compare.sh                     # every scenario, 3 runs each (about 10 minutes)
#   QUICK=1 bench/compare.sh             # shorter runs (about 4 minutes)
#   bench/compare.sh pairs-q1 conn-10k   # a subset, by scenario name (see SCENARIOS below)
#   bench/compare.sh --table DIR         # print the table again from a finished run's OUT
#   SCRAPE=1 bench/compare.sh pairs-q1   # midge against itself with /metrics scraped every second
#   FLOOR=1 bench/compare.sh device-1k-q0  # and two do-nothing relays (bench/relay), the floor
#   PROFILE=1 bench/compare.sh device-1k-q0  # and each broker's system calls and kernel share
#
# Each run starts a fresh broker pinned to one core (BROKER_CPU, default 0) and runs the
# generator on another (GEN_CPU, default 1); brokers are interleaved, every scenario runs
# RUNS times (default 3) and the median is reported. Output: a markdown table on stdout
# (paste it into BENCHMARKS.md); every run's JSON report is kept in OUT.
#
# Brokers:
#   midge      this repository's release build; memory store (MIDGE_STORAGE__BACKEND=memory),
#              $SYS off, no queue limit (MIDGE_MQTT__MAX_QUEUED_MESSAGES=0), otherwise defaults
#              (max_inflight 32), logging at warn.
#   mosquitto  the system's `mosquitto`: listener, allow_anonymous true, sys_interval 0,
#              max_queued_messages 0 (no queue limit), persistence off (the default),
#              set_tcp_nodelay true (midge sets TCP_NODELAY on every client socket, so both
#              brokers write each packet when it is ready), logging errors and warnings
#              only; otherwise defaults (max_inflight_messages 20).
#
# With FLOOR=1 two more "brokers" run beside them: bench/relay/relay.c, a do-nothing MQTT
# relay in C (it forwards each PUBLISH to its topic's subscribers and acknowledges, nothing
# else), once with an epoll loop ("relay") and once with io_uring ("relay-uring"). Their CPU
# per message is the floor of system calls and kernel TCP work under a scenario. They need
# gcc and Debian's liburing-dev.
#
# With PROFILE=1 every run is 8 s after 1 s of warm-up, and 4 s in, for 3 s, perf counts
# the broker's system calls (`perf stat` on the syscall tracepoints) and samples where its
# CPU goes (`perf record -e cpu-clock`); a second table gives both per delivered message.
# It needs perf (Debian's linux-perf) and permission to trace (root, or
# kernel.perf_event_paranoid -1). The profiling costs the broker CPU of its own, so read
# CPU per message from a run without it.
#
# With SCRAPE=1 the second broker is midge again ("midge-scraped"), its admin listener's
# /metrics fetched with curl once a second (on the generator's core) for the whole run:
# the table's ratio column is then the cost of being scraped.
#
# The device-* scenarios are traffic as devices send it: every message in a write of its
# own, over 1,000 or 10,000 connections (500 or 5,000 publisher/subscriber pairs) at 10,000
# msg/s in all, schedules spread over each period; the broker is not saturated, and CPU per
# message is what counts. The go-device-* scenarios are the same traffic from an independent
# generator (bench/devicego, Eclipse Paho's Go client), run only when named:
#   bench/compare.sh device-1k-q0 go-device-1k-q0
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
BROKER_CPU=${BROKER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
MANY=${MANY:-19000}
MIDGE_PORT=${MIDGE_PORT:-21883}
MOSQUITTO_PORT=${MOSQUITTO_PORT:-21884}
RELAY_PORT=${RELAY_PORT:-21885}
ADMIN_PORT=${ADMIN_PORT:-28083}
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/midge-compare.XXXXXX")}
mkdir -p "$OUT"
if [[ -n "${SCRAPE:-}" ]]; then
    BROKERS=(midge midge-scraped)
else
    BROKERS=(midge mosquitto)
fi
if [[ -n "${FLOOR:-}" ]]; then
    BROKERS+=(relay relay-uring)
fi
if [[ -n "${PROFILE:-}" ]]; then
    TIMING=(-d 8 -w 1)
    command -v perf >/dev/null || { echo "perf not found (apt-get install -y linux-perf)" >&2; exit 1; }
elif [[ -n "${QUICK:-}" ]]; then
    TIMING=(-d 2 -w 0.5)
else
    TIMING=(-d 5 -w 1)
fi

# name | midge bench arguments
SCENARIOS=(
    "fanin-q0|fanin -P 100 -S 1 -q 0"
    "fanin-q1|fanin -P 100 -S 1 -q 1"
    "fanout-q0|fanout -P 1 -S 100 -q 0"
    "fanout-q1|fanout -P 1 -S 100 -q 1"
    "pairs-q0|pairs -N 100 -q 0"
    "pairs-q1|pairs -N 100 -q 1"
    "pairs-q2|pairs -N 100 -q 2"
    "pairs-q1-256B|pairs -N 100 -q 1 -s 256"
    "latency-q1-10k|pairs -N 100 -q 1 --rate 10000"
    "device-1k-q0|device -N 500 -q 0 --rate 10000"
    "device-1k-q1|device -N 500 -q 1 --rate 10000"
    "device-10k-q0|device -N 5000 -q 0 --rate 10000"
    "device-10k-q1|device -N 5000 -q 1 --rate 10000"
    "conn-10k|conn -C 10000 --conn-subscribe --hold 2"
    "conn-10k-plain|conn -C 10000 --hold 2"
    # As many idle connections as the open-files limit allows (MANY, default 19,000: the
    # hard limit here is 20,000 per process), all subscribed to one topic, then one message
    # fanned out to all of them; one loopback source address per 10,000 connections.
    "conn-many-fanout|conn -C $MANY --conn-fanout --conn-sources $(( (MANY + 9999) / 10000 )) --hold 2"
    # The device scenarios again from an independent client, Eclipse Paho's Go client
    # (bench/devicego), as a cross-check of midge bench. Not in the default set: they need
    # Debian's golang-go and golang-github-eclipse-paho.mqtt.golang-dev.
    "go-device-1k-q0|go -N 500 -q 0 --rate 10000"
    "go-device-1k-q1|go -N 500 -q 1 --rate 10000"
    "go-device-10k-q0|go -N 5000 -q 0 --rate 10000"
    "go-device-10k-q1|go -N 5000 -q 1 --rate 10000"
)

command -v mosquitto >/dev/null || { echo "mosquitto not found (apt-get install -y mosquitto)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }

# 10,000 connections need 10,000 descriptors in the generator and in each broker, and
# conn-many-fanout MANY of them.
ulimit -n $(( MANY + 1000 > 65536 ? MANY + 1000 : 65536 )) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < 10100 )); then
    echo "warning: open files limit is $(ulimit -n); conn-10k needs more than 10,000" >&2
fi
if (( $(ulimit -n) < MANY + 100 )); then
    echo "warning: open files limit is $(ulimit -n); conn-many-fanout needs more than MANY=$MANY" >&2
fi

# The table code is shared with bench/amqp.sh.
table() {
    python3 "$ROOT/bench/table.py" compare "$@"
}

if [[ ${1:-} == --table ]]; then
    dir=${2:?--table DIR}
    names=$(cat "$dir/scenarios")
    # shellcheck disable=SC2086
    table "$dir" "$(cat "$dir/runs")" $names
    exit 0
fi

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MIDGE=$TARGET/release/midge
echo "building midge (release)..." >&2
cargo build --release -p midge --manifest-path "$ROOT/Cargo.toml" >&2

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
    for s in "${SCENARIOS[@]}"; do
        [[ ${s#*|} == go\ * ]] || selected+=("$s")
    done
fi

DEVICEGO=$TARGET/devicego
if [[ " ${selected[*]#*|}" == *" go "* ]]; then
    command -v go >/dev/null || { echo "go not found (apt-get install -y golang-go golang-github-eclipse-paho.mqtt.golang-dev)" >&2; exit 1; }
    echo "building bench/devicego..." >&2
    # GOPATH mode from Debian's Go sources: no module download.
    (cd "$ROOT/bench/devicego" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
        GOCACHE="$TARGET/go-cache" go build -o "$DEVICEGO" .) >&2
fi

RELAY=$TARGET/relay
if [[ -n "${FLOOR:-}" ]]; then
    [[ -f /usr/include/liburing.h ]] || { echo "liburing.h not found (apt-get install -y liburing-dev)" >&2; exit 1; }
    echo "building bench/relay..." >&2
    gcc -O2 -Wall -Wextra -o "$RELAY" "$ROOT/bench/relay/relay.c" -luring >&2
fi

# mosquitto_config, wait_for_port
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
mosquitto_config "$OUT/mosquitto.conf" "$MOSQUITTO_PORT"

BROKER_PID=
SCRAPER_PID=
start_broker() {
    local broker=$1 log=$2
    case $broker in
        midge|midge-scraped)
            MIDGE_STORAGE__BACKEND=memory MIDGE_SYS__INTERVAL_SECS=0 \
            MIDGE_MQTT__MAX_QUEUED_MESSAGES=0 MIDGE_LISTENER__0__BIND=127.0.0.1:$MIDGE_PORT \
            MIDGE_ADMIN__BIND=127.0.0.1:$ADMIN_PORT \
            RUST_LOG=warn taskset -c "$BROKER_CPU" "$MIDGE" serve >"$log" 2>&1 &
            BROKER_PID=$!
            wait_for_port "$MIDGE_PORT" "$BROKER_PID" || return 1
            if [[ $broker == midge-scraped ]]; then
                wait_for_port "$ADMIN_PORT" "$BROKER_PID" || return 1
                # What a Prometheus server with scrape_interval 1s does.
                taskset -c "$GEN_CPU" bash -c "while sleep 1; do
                    curl -sf -o /dev/null http://127.0.0.1:$ADMIN_PORT/metrics || exit 1; done" &
                SCRAPER_PID=$!
            fi ;;
        mosquitto)
            taskset -c "$BROKER_CPU" mosquitto -c "$OUT/mosquitto.conf" >"$log" 2>&1 &
            BROKER_PID=$!
            wait_for_port "$MOSQUITTO_PORT" "$BROKER_PID" ;;
        relay|relay-uring)
            local mode=()
            [[ $broker == relay-uring ]] && mode=(--uring)
            taskset -c "$BROKER_CPU" "$RELAY" "${mode[@]}" "$RELAY_PORT" >"$log" 2>&1 &
            BROKER_PID=$!
            wait_for_port "$RELAY_PORT" "$BROKER_PID" ;;
    esac
}

stop_broker() {
    if [[ -n $SCRAPER_PID ]]; then
        kill "$SCRAPER_PID" 2>/dev/null || true
        wait "$SCRAPER_PID" 2>/dev/null || true
        SCRAPER_PID=
    fi
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
}
generator=
trap '[[ -n $generator ]] && kill "$generator" 2>/dev/null; stop_broker' EXIT

# PROFILE=1: 4 s into the run, 3 s of the broker's system calls and CPU samples.
SYSCALLS=raw_syscalls:sys_enter
for call in recvfrom sendto read write readv writev epoll_wait epoll_ctl io_uring_enter futex; do
    SYSCALLS+=",syscalls:sys_enter_$call"
done
profile() {
    local base=$1
    sleep 4
    perf stat -x, -o "$base.syscalls" -e "$SYSCALLS" -p "$BROKER_PID" -- sleep 3 2>/dev/null &
    local stat=$!
    perf record -q -e cpu-clock -F 4000 -p "$BROKER_PID" -o "$base.perf" -- sleep 3 2>/dev/null
    wait "$stat"
    # Where the samples fell: the kernel, the broker's code, libc...
    perf report -i "$base.perf" --sort dso --stdio 2>/dev/null | grep '%' >"$base.dso" || true
    rm -f "$base.perf"
}

uptime >"$OUT/load.before"
for run in $(seq "$RUNS"); do
    for s in "${selected[@]}"; do
        name=${s%%|*}
        read -r -a args <<<"${s#*|}"
        for broker in "${BROKERS[@]}"; do
            port=$MIDGE_PORT
            [[ $broker == mosquitto ]] && port=$MOSQUITTO_PORT
            [[ $broker == relay* ]] && port=$RELAY_PORT
            result="$OUT/$name.$broker.$run.json"
            if ! start_broker "$broker" "$OUT/$name.$broker.$run.log"; then
                echo "{\"error\": \"$broker did not start\"}" >"$result"
                stop_broker
                continue
            fi
            echo "run $run/$RUNS: $name on $broker" >&2
            command=("$MIDGE" bench "${args[@]}")
            [[ ${args[0]} == go ]] && command=("$DEVICEGO" "${args[@]:1}")
            taskset -c "$GEN_CPU" "${command[@]}" "${TIMING[@]}" -p "$port" \
                --broker-pid "$BROKER_PID" --json --quiet >"$result" 2>"$result.err" &
            generator=$!
            [[ -n "${PROFILE:-}" ]] && profile "$OUT/$name.$broker.$run"
            if ! wait "$generator"; then
                echo "  failed: $(tail -1 "$result.err")" >&2
                echo "{\"error\": $(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' <"$result.err")}" >"$result"
            fi
            stop_broker
        done
    done
done

echo "${selected[*]%%|*}" >"$OUT/scenarios"
echo "$RUNS" >"$OUT/runs"
echo "${BROKERS[*]}" >"$OUT/brokers"
uptime >"$OUT/load.after"
table "$OUT" "$RUNS" "${selected[@]%%|*}"
