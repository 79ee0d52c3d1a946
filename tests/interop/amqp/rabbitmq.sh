#!/usr/bin/env bash
# A throwaway RabbitMQ (Debian's rabbitmq-server, with the rabbitmq_mqtt and rabbitmq_web_mqtt
# plugins) on loopback, for the differential tests and the AMQP benchmark. Not a system
# service: its config, database, logs and Erlang cookie live under DIR, and the node is
# stopped by its PID.
#
#   rabbitmq.sh run DIR AMQP_PORT MQTT_PORT WS_PORT DIST_PORT
#       Starts the node, prints "ready PID" (PID: the Erlang VM) once both the AMQP and the
#       MQTT listeners accept connections, then stops the node when its standard input
#       ends, so a test that dies for any reason takes the node with it.
#   rabbitmq.sh start DIR AMQP_PORT MQTT_PORT WS_PORT DIST_PORT   (prints "ready PID")
#   rabbitmq.sh stop DIR
#
# scripts/test-deps.sh installs rabbitmq-server. guest/guest works from loopback; MQTT
# clients may connect without credentials (they become guest, RabbitMQ's default).
# epmd, which Erlang distribution needs, is bound to loopback; one this script started is
# stopped with the node when no other node is registered with it.
set -euo pipefail

server=/usr/lib/rabbitmq/bin/rabbitmq-server
cmd="${1:-}"
dir="${2:-}"
usage() {
    echo "usage: $0 run|start DIR AMQP_PORT MQTT_PORT WS_PORT DIST_PORT | stop DIR" >&2
    exit 2
}
[ -n "$cmd" ] && [ -n "$dir" ] || usage

# Set by start_node; `stop` reads them back from DIR/pid. `run` keeps them in memory, since
# its caller may remove DIR before the node is down.
launcher="" pid="" started_epmd=0
stop_node() {
    if [ -z "$launcher" ] && [ -f "$dir/pid" ]; then
        read -r launcher pid started_epmd <"$dir/pid" || true
    fi
    if [ -n "$launcher" ]; then
        [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 80); do
            kill -0 "${pid:-$launcher}" 2>/dev/null || break
            sleep 0.25
        done
        [ -n "${pid:-}" ] && kill -9 "$pid" 2>/dev/null || true
        kill "$launcher" 2>/dev/null || true
        # epmd refuses to stop while a node is registered, so a shared epmd stays; ours may
        # still list the node for a moment after it exited, hence the retries.
        if [ "${started_epmd:-0}" = 1 ]; then
            for _ in $(seq 1 20); do
                epmd -names >/dev/null 2>&1 || break
                epmd -kill >/dev/null 2>&1 || true
                sleep 0.1
            done
        fi
        rm -f "$dir/pid"
        launcher=""
    fi
}

start_node() {
    local amqp="$1" mqtt="$2" ws="$3" dist="$4"
    if [ ! -x "$server" ]; then
        echo "rabbitmq-server is not installed ($server); install it with scripts/test-deps.sh" >&2
        exit 1
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    echo '[rabbitmq_mqtt,rabbitmq_web_mqtt].' >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp
mqtt.listeners.tcp.default = 127.0.0.1:$mqtt
mqtt.allow_anonymous = true
web_mqtt.tcp.port = $ws
web_mqtt.tcp.ip = 127.0.0.1
loopback_users.guest = true
CONF
    # Asked, not looked up by process name: an exited epmd may linger as a zombie.
    epmd -names >/dev/null 2>&1 || started_epmd=1
    # Unique per AMQP port; a node name allows letters, digits, "-" and "_" only.
    local node="rabbit-$amqp@localhost"
    (
        cd "$dir" &&
            HOME="$dir" ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_MNESIA_BASE="$dir/mnesia" \
                RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
                RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_NODENAME="$node" \
                RABBITMQ_DIST_PORT="$dist" exec "$server" >"$dir/server.out" 2>&1
    ) &
    launcher=$!
    # Startup takes 5-20 s on a busy machine; bounded at 90 s.
    for _ in $(seq 1 360); do
        if ! kill -0 "$launcher" 2>/dev/null; then
            echo "rabbitmq-server exited during startup:" >&2
            tail -n 30 "$dir/server.out" >&2 || true
            exit 1
        fi
        if (exec 3<>/dev/tcp/127.0.0.1/"$amqp") 2>/dev/null &&
            (exec 3<>/dev/tcp/127.0.0.1/"$mqtt") 2>/dev/null; then
            pid=$(pgrep -P "$launcher" beam.smp || true)
            echo "$launcher $pid $started_epmd" >"$dir/pid"
            echo "ready ${pid:-$launcher}"
            return 0
        fi
        sleep 0.25
    done
    echo "rabbitmq-server did not accept connections within 90 s; see $dir/server.out" >&2
    stop_node
    exit 1
}

case "$cmd" in
run)
    [ $# -eq 6 ] || usage
    trap stop_node EXIT
    start_node "$3" "$4" "$5" "$6"
    # Until the caller closes our standard input (or dies).
    cat >/dev/null || true
    ;;
start)
    [ $# -eq 6 ] || usage
    start_node "$3" "$4" "$5" "$6"
    ;;
stop)
    stop_node
    echo stopped
    ;;
*) usage ;;
esac
