#!/usr/bin/env bash
# Installs what the interop tests drive midge with: Python paho-mqtt, mqtt.js and
# playwright-core (npm), Mosquitto (Debian packages, for the clients and the differential
# tests) and Chromium (Debian's, for the browser test; playwright drives /usr/bin/chromium
# and never downloads a browser of its own). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
    echo "installing Python paho-mqtt" >&2
    python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/python/requirements.txt
fi

if [ ! -d tests/interop/js/node_modules/mqtt ] || [ ! -d tests/interop/js/node_modules/playwright-core ]; then
    echo "installing mqtt.js and playwright-core" >&2
    (cd tests/interop/js && npm ci --silent --no-audit --no-fund)
fi

packages=()
if ! command -v mosquitto >/dev/null || ! command -v mosquitto_sub >/dev/null; then
    packages+=(mosquitto mosquitto-clients)
fi
if [ ! -x /usr/bin/chromium ]; then
    packages+=(chromium)
fi
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${packages[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
        echo "these Debian packages are needed: apt-get install ${packages[*]}" >&2
        exit 1
    fi
fi
