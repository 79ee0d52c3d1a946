# Shared by the bench scripts, which source it.

# midge_config FILE PORT [NODE_ID NATS_PORT]: midge as it is benchmarked (memory store,
# $SYS off, no queue limit, admin off, anonymous clients), a cluster node on the
# nats-server at NATS_PORT when NODE_ID is given.
midge_config() {
    local file=$1 port=$2 node=${3:-} nats_port=${4:-}
    cat >"$file" <<CONF
[[listener]]
bind = "127.0.0.1:$port"

[auth]
allow_anonymous = true

[sys]
interval_secs = 0

[storage]
backend = "memory"

[mqtt]
max_queued_messages = 0

[admin]
enabled = false
CONF
    if [[ -n $node ]]; then
        cat >>"$file" <<CONF

[cluster]
backend = "nats"
node_id = "$node"
nats_urls = ["nats://127.0.0.1:$nats_port"]
CONF
    fi
}

# mosquitto_config FILE PORT: Mosquitto as it is benchmarked beside midge (no queue limit,
# TCP_NODELAY on as midge has it, $SYS off, errors and warnings on stderr).
mosquitto_config() {
    local file=$1 port=$2
    cat >"$file" <<CONF
listener $port 127.0.0.1
allow_anonymous true
sys_interval 0
max_queued_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
CONF
}

# wait_for_port PORT PID: returns once something listens on 127.0.0.1:PORT; fails when
# PID ends first or after 20 s.
wait_for_port() {
    local port=$1 pid=$2
    for _ in $(seq 400); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}
