#!/usr/bin/env bash
# Runs every test: unit, integration (rumqttc, raw bytes), and interop with Python paho-mqtt,
# mqtt.js and Mosquitto. Installs the interop clients first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-deps.sh

cargo test --workspace --locked "$@"
