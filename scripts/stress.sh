#!/usr/bin/env bash
# Runs the stress scenarios of issue 9 (crates/midge/tests/stress.rs) against a release
# build of the real binary, with the issue's sizes, and prints each scenario's figures.
# RELIABILITY.md says what each scenario does and what it measured.
#
#   scripts/stress.sh                      # the long run: about 50 minutes (the soak is 30)
#   scripts/stress.sh takeover             # one scenario (a cargo test name filter)
#   MIDGE_STRESS_SECS=30 scripts/stress.sh # shorter, same sizes
#
# Every size can be overridden from the environment (defaults below are the issue's):
#   MIDGE_STRESS_SECS               seconds per scenario (the storm splits it into rounds)
#   MIDGE_STRESS_STORM_CONNECTIONS  connections fighting over ...
#   MIDGE_STRESS_STORM_IDS          ... this many client ids
#   MIDGE_STRESS_STORM_ROUNDS       storms in a row (memory after each is compared)
#   MIDGE_STRESS_STORM_CHURN        filters churned: both, normal, share or none
#   MIDGE_STRESS_DEAD               subscribers that never read
#   MIDGE_STRESS_DEAD_PHASE_SECS    seconds of fan-out without, then with, the dead ones
#   MIDGE_STRESS_FANOUT_RATE        fan-out messages (1 KiB, QoS 0) per second
#   MIDGE_STRESS_BUDGET_MIB         [limits] max_memory of the dead-consumers-under-a-budget run
#   MIDGE_STRESS_SNDBUF_KIB         [limits] socket_send_buffer of both dead-consumer runs (0: autotuned)
#   MIDGE_STRESS_ARRIVALS           a file for every fan-out message's arrival and latency (dead consumers)
#   MIDGE_STRESS_BURST              TCP connects per burst (four bursts a second)
#   MIDGE_STRESS_SLOWLORIS          sockets trickling a CONNECT one byte a second
#   MIDGE_STRESS_STORAGE            "memory" takes the store out of the figures
#   MIDGE_STRESS_SOAK_SECS          seconds of the long soak's mixed load
#   MIDGE_STRESS_SOAK_PUBLISHERS    its publishers ...
#   MIDGE_STRESS_SOAK_RATE          ... each this many messages a second (QoS 0, 1, 2 in turn)
#   MIDGE_STRESS_SOAK_RECONNECTORS  clients connecting and leaving in a loop
#   MIDGE_STRESS_SOAK_SLOW          slow consumers at their queue limits
#   MIDGE_STRESS_SOAK_RETAIN_RATE   retained messages set, replaced or deleted a second
#   MIDGE_STRESS_SOAK_MAX_QUEUED    the broker's max_queued_messages in the soak
#   MIDGE_STRESS_SOAK_RSS_PCT       allowed RSS growth after the warm-up, in percent
# The CI variant is the same test binary in debug with the defaults in stress.rs:
#   cargo test -p midge --test stress -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

export MIDGE_STRESS_SECS="${MIDGE_STRESS_SECS:-300}"
export MIDGE_STRESS_STORM_CONNECTIONS="${MIDGE_STRESS_STORM_CONNECTIONS:-1000}"
export MIDGE_STRESS_STORM_IDS="${MIDGE_STRESS_STORM_IDS:-100}"
export MIDGE_STRESS_STORM_ROUNDS="${MIDGE_STRESS_STORM_ROUNDS:-5}"
export MIDGE_STRESS_DEAD="${MIDGE_STRESS_DEAD:-10000}"
export MIDGE_STRESS_DEAD_PHASE_SECS="${MIDGE_STRESS_DEAD_PHASE_SECS:-60}"
export MIDGE_STRESS_FANOUT_RATE="${MIDGE_STRESS_FANOUT_RATE:-1000}"
export MIDGE_STRESS_BUDGET_MIB="${MIDGE_STRESS_BUDGET_MIB:-256}"
export MIDGE_STRESS_BURST="${MIDGE_STRESS_BURST:-20000}"
export MIDGE_STRESS_SLOWLORIS="${MIDGE_STRESS_SLOWLORIS:-1000}"
export MIDGE_STRESS_SOAK_SECS="${MIDGE_STRESS_SOAK_SECS:-1800}"
export MIDGE_STRESS_SOAK_RATE="${MIDGE_STRESS_SOAK_RATE:-100}"
export MIDGE_STRESS_SOAK_RECONNECTORS="${MIDGE_STRESS_SOAK_RECONNECTORS:-24}"
export MIDGE_STRESS_SOAK_MAX_QUEUED="${MIDGE_STRESS_SOAK_MAX_QUEUED:-200}"

# 10,000 dead subscribers need descriptors on both sides. Bursts of 20,000 connects are
# split over flood processes of 10,000 each (FLOOD_PER_PROCESS in stress.rs).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < 12000 )); then
    echo "warning: open files limit is $(ulimit -n); the issue's sizes need about 12,000" >&2
fi

log="$(mktemp -t midge-stress.XXXXXX)"
echo "machine: $(nproc) cores, $(free -m | awk '/^Mem:/ {print $2}') MiB; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sizes: $(env | grep '^MIDGE_STRESS_' | sort | tr '\n' ' ')"
echo "full output: $log"
set +e
cargo test --release --locked -p midge --test stress -- --nocapture --test-threads=1 "$@" >"$log" 2>&1
status=$?
set -e
# The figures each scenario prints (libtest may put "test NAME ..." before them on the
# same line), then the verdicts.
grep -oE '(storm round [0-9]+/[0-9]+|dead consumers under a memory budget|dead consumers|flood|shared churn|soak):.*' "$log" || true
grep -E '^test result|panicked|FAILED' "$log" || true
exit "$status"
