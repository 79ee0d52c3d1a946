#!/usr/bin/env bash
# A connected client's PINGREQ p99, quiet and under a connect flood (scripts/flood_ping.py),
# for four brokers in turn, each flooded itself: the do-nothing C relay (bench/relay, which
# lets every connection in), midge with its defaults (which let the flood in too), midge with
# limits per address that refuse most of it, and Mosquitto. The comparison behind
# RELIABILITY.md's "A broker that does nothing is not within 2× either".
#
#   scripts/flood_compare.sh [BURST] [RUNS] [SECONDS]     # defaults: 500 3 20
#
# Each line: the broker, its CPU ticks (10 ms) over the flood, and flood_ping.py's figures.
# Needs gcc and liburing-dev (the relay), Mosquitto, and a release build of midge (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
burst=${1:-500}
runs=${2:-3}
seconds=${3:-20}

ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -p midge -q
dir=$(mktemp -d -t midge-flood.XXXXXX)
pid=
cleanup() {
    [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
gcc -O2 -Wall -Wextra -o "$dir/relay" bench/relay/relay.c -luring

# Ports that no default broker uses; no admin listener, nothing stored.
midge_config() {
    printf '[[listener]]\nbind = "127.0.0.1:%s"\n' "$1"
    printf '[auth]\nallow_anonymous = true\n[admin]\nenabled = false\n[storage]\nbackend = "memory"\n'
}
midge_config 21901 >"$dir/midge-defaults.toml"
midge_config 21902 >"$dir/midge-limits.toml"
cat >>"$dir/midge-limits.toml" <<'EOF'
[limits]
connections_per_ip = 32
connect_rate_per_ip = 100
connect_burst_per_ip = 50
EOF
cat >"$dir/mosquitto.conf" <<'EOF'
listener 21903 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
log_dest none
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for run in $(seq 1 "$runs"); do
    for broker in relay midge-defaults midge-limits mosquitto; do
        case $broker in
            relay) "$dir/relay" 21900 >/dev/null 2>&1 & port=21900 ;;
            midge-*) target/release/midge serve -c "$dir/$broker.toml" >/dev/null 2>&1 &
                port=$([[ $broker == midge-defaults ]] && echo 21901 || echo 21902) ;;
            mosquitto) mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 & port=21903 ;;
        esac
        pid=$!
        for _ in $(seq 50); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        before=$(cpu_ticks "$pid")
        figures=$(python3 scripts/flood_ping.py "$port" "$seconds" "$burst" | tail -1)
        echo "$(date -u +%H:%M:%S) B=$burst run $run $broker: CPU $(($(cpu_ticks "$pid") - before)) ticks; $figures"
        kill -TERM "$pid"
        wait "$pid" 2>/dev/null || true
        pid=
        sleep 2
    done
done
