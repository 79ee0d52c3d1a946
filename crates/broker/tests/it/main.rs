//! Integration tests: the real broker on 127.0.0.1:0, driven by independent clients
//! (rumqttc v3.1.1 and v5) and by raw bytes. One test binary, modules by theme.

mod access_support;
mod acl;
mod client;
mod connect;
mod harness;
mod http_auth;
mod keepalive;
mod limits;
mod listener_auth;
mod malformed;
mod overlap;
mod passwords;
mod qos;
mod retain;
mod sessions;
mod smoke;
mod sys;
mod takeover;
mod topics;
mod v5;
mod will;
