//! Integration tests: the real broker on 127.0.0.1:0, driven by independent clients
//! (rumqttc v3.1.1 and v5, rustls and tungstenite clients, Python paho-mqtt, mqtt.js,
//! Mosquitto's clients, headless Chromium) and by raw bytes. One test binary, modules by
//! theme.

mod harness;
mod pki;
mod smoke;
mod tls;
mod transport_interop;
mod ws;
