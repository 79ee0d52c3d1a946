#!/usr/bin/env bash
# Installs what the interop tests drive midge with: Python paho-mqtt, mqtt.js (npm) and
# Mosquitto (Debian packages, for the clients and the differential tests). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
    echo "installing Python paho-mqtt" >&2
    python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/python/requirements.txt
fi

if [ ! -d tests/interop/js/node_modules/mqtt ]; then
    echo "installing mqtt.js" >&2
    (cd tests/interop/js && npm ci --silent --no-audit --no-fund)
fi

if ! command -v mosquitto >/dev/null || ! command -v mosquitto_sub >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing mosquitto and mosquitto-clients" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
    else
        echo "mosquitto and mosquitto-clients are needed: apt-get install mosquitto mosquitto-clients" >&2
        exit 1
    fi
fi
