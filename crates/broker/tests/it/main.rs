//! Integration tests: the real broker on 127.0.0.1:0, driven by independent clients
//! (rumqttc v3.1.1 and v5, rustls and tungstenite clients, and in the interop_* modules
//! Python paho-mqtt, mqtt.js, Mosquitto's clients, headless Chromium, and the Go and C Paho
//! clients running a seed's device scenario) and by raw bytes;
//! differential runs scenarios against Mosquitto too. One test binary, modules by theme.

mod access_support;
mod acl;
mod admin;
mod admin_http;
mod amqp;
mod amqp_differential;
mod amqp_rust_client;
mod auth_chain;
mod client;
mod client_certs;
mod conformance;
mod conn_limits;
mod connect;
mod differential;
mod dynsec;
mod harness;
mod hostile_connect;
mod http_auth;
mod http_rabbitmq;
mod interop_go;
mod interop_mosquitto_clients;
mod interop_mqttjs;
mod interop_paho;
mod interop_pahoc;
mod interop_seed;
mod interop_util;
mod jwt;
mod keepalive;
mod limits;
mod listener_auth;
mod malformed;
mod memory_budget;
mod overlap;
mod passwords;
mod pki;
mod qos;
mod reload;
mod retain;
mod scram;
mod sessions;
mod smoke;
mod sys;
mod takeover;
mod tls;
mod topics;
mod transport_interop;
mod v5;
mod will;
mod ws;
