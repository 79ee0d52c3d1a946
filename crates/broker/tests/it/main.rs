//! Integration tests: the real broker on 127.0.0.1:0, driven by independent clients
//! (rumqttc v3.1.1 and v5, and in the interop_* modules Python paho-mqtt, mqtt.js and
//! mosquitto_pub/sub) and by raw bytes; differential runs scenarios against Mosquitto too.
//! One test binary, modules by theme.

mod differential;
mod harness;
mod interop_mosquitto_clients;
mod interop_mqttjs;
mod interop_paho;
mod interop_util;
mod smoke;
