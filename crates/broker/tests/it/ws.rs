//! MQTT over WebSocket and secure WebSocket, driven by a tungstenite client and raw HTTP:
//! paths, the `mqtt` subprotocol, packets split across and packed into frames, text frames,
//! frame size limits, and the upgrade running in the connection's own task.

use futures_util::{SinkExt, StreamExt};
use midge_broker::config::{ListenerConfig, ListenerProtocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::harness::{CONNACK_V311_OK, TIMEOUT, connect_v311};
use crate::pki::{ALL_VERSIONS, PINGREQ, PINGRESP, Pki, client_config};
use crate::tls::{start, tls_settings};

pub fn ws_listener(paths: &[&str]) -> ListenerConfig {
    ListenerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        protocol: ListenerProtocol::Ws,
        ws_path: paths.iter().map(|p| (*p).to_owned()).collect(),
        ..ListenerConfig::default()
    }
}

/// A WebSocket client that reads the broker's bytes regardless of how they are framed.
struct WsClient<S> {
    socket: WebSocketStream<S>,
    /// Bytes received and not yet taken.
    received: Vec<u8>,
    /// The subprotocol the broker answered with.
    subprotocol: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    async fn open(stream: S, url: &str, offered: Option<&str>) -> Self {
        let mut request = url.into_client_request().unwrap();
        if let Some(offered) = offered {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(offered).unwrap(),
            );
        }
        let (socket, response) =
            tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream))
                .await
                .expect("upgrade timed out")
                .expect("upgrade");
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Self {
            socket,
            received: Vec::new(),
            subprotocol,
        }
    }

    async fn send_frame(&mut self, bytes: &[u8]) {
        self.socket
            .send(Message::Binary(Bytes::copy_from_slice(bytes)))
            .await
            .expect("send");
    }

    /// The next `n` bytes of the broker's stream, across as many messages as it takes.
    async fn recv(&mut self, n: usize) -> Vec<u8> {
        while self.received.len() < n {
            let message = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("timed out waiting for bytes")
                .expect("stream ended")
                .expect("read");
            match message {
                Message::Binary(data) => self.received.extend_from_slice(&data),
                other => panic!("expected a binary message, got {other:?}"),
            }
        }
        self.received.drain(..n).collect()
    }

    /// Waits for the broker to end the WebSocket (close frame, or the stream ending).
    async fn expect_closed(&mut self) {
        loop {
            let next = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("the broker did not close the connection");
            match next {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Binary(data))) => {
                    panic!("expected the connection to close, got {data:02X?}")
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

async fn ws_connect(port: u16, path: &str, offered: Option<&str>) -> WsClient<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    WsClient::open(tcp, &format!("ws://127.0.0.1:{port}{path}"), offered).await
}

#[tokio::test]
async fn ws_client_offering_mqtt_gets_it_back_and_a_connack() {
    let (server, ports) = start(vec![ws_listener(&[])], |_| {}).await;
    let mut client = ws_connect(ports[0], "/mqtt", Some("mqtt")).await;
    // [MQTT-6.0.0-4]
    assert_eq!(client.subprotocol.as_deref(), Some("mqtt"));
    client.send_frame(&connect_v311("ws")).await;
    assert_eq!(client.recv(4).await, CONNACK_V311_OK);
    client.send_frame(&PINGREQ).await;
    assert_eq!(client.recv(2).await, PINGRESP);
    server.shutdown().await;
}

#[tokio::test]
async fn subprotocol_is_echoed_only_when_offered() {
    let (server, ports) = start(vec![ws_listener(&[])], |_| {}).await;
    let client = ws_connect(ports[0], "/mqtt", None).await;
    assert_eq!(client.subprotocol, None);
    let client = ws_connect(ports[0], "/mqtt", Some("mqttv3.1")).await;
    assert_eq!(client.subprotocol.as_deref(), Some("mqttv3.1"));
    // Both offered: the current name wins.
    let client = ws_connect(ports[0], "/mqtt", Some("mqttv3.1, mqtt")).await;
    assert_eq!(client.subprotocol.as_deref(), Some("mqtt"));
    server.shutdown().await;
}

/// Sends a WebSocket upgrade request for `path` by hand and returns the status line.
async fn upgrade_status(port: u16, path: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut byte = [0; 1];
    while !response.ends_with(b"\r\n") {
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut byte))
            .await
            .expect("timed out reading the status line")
            .unwrap();
        assert_eq!(n, 1, "connection closed before a status line");
        response.push(byte[0]);
    }
    String::from_utf8(response).unwrap().trim_end().to_owned()
}

#[tokio::test]
async fn configured_paths_upgrade_and_any_other_path_gets_404() {
    let (server, ports) = start(vec![ws_listener(&["/mqtt", "/ws"])], |_| {}).await;
    assert_eq!(
        upgrade_status(ports[0], "/mqtt").await,
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(
        upgrade_status(ports[0], "/ws?client=1").await,
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(
        upgrade_status(ports[0], "/").await,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        upgrade_status(ports[0], "/mqtt/x").await,
        "HTTP/1.1 404 Not Found"
    );
    let mut client = ws_connect(ports[0], "/ws", Some("mqtt")).await;
    client.send_frame(&connect_v311("ws-path")).await;
    assert_eq!(client.recv(4).await, CONNACK_V311_OK);
    server.shutdown().await;
}

#[tokio::test]
async fn packets_split_across_frames_and_packed_into_one_frame_are_all_decoded() {
    let (server, ports) = start(vec![ws_listener(&[])], |_| {}).await;
    let mut client = ws_connect(ports[0], "/mqtt", Some("mqtt")).await;
    // [MQTT-6.0.0-2] CONNECT in three frames, cut inside the protocol name and the client id.
    let connect = connect_v311("split-client");
    client.send_frame(&connect[..4]).await;
    client.send_frame(&connect[4..14]).await;
    client.send_frame(&connect[14..]).await;
    assert_eq!(client.recv(4).await, CONNACK_V311_OK);

    let subscribe = [
        0x82, 0x08, // SUBSCRIBE, remaining length 8
        0x00, 0x01, // packet id 1
        0x00, 0x03, b'a', b'/', b'b', // filter "a/b"
        0x00, // QoS 0
    ];
    let publish = [
        0x30, 0x07, // PUBLISH QoS 0, remaining length 7
        0x00, 0x03, b'a', b'/', b'b', // topic "a/b"
        b'h', b'i', // payload
    ];
    // SUBSCRIBE, PINGREQ and the first half of a PUBLISH in one frame; the rest in the next.
    let mut frame = subscribe.to_vec();
    frame.extend_from_slice(&PINGREQ);
    frame.extend_from_slice(&publish[..4]);
    client.send_frame(&frame).await;
    client.send_frame(&publish[4..]).await;

    let suback = [
        0x90, 0x03, // SUBACK, remaining length 3
        0x00, 0x01, // packet id 1
        0x00, // granted QoS 0
    ];
    assert_eq!(client.recv(5).await, suback);
    assert_eq!(client.recv(2).await, PINGRESP);
    // The client subscribed to its own topic, so its PUBLISH comes back.
    assert_eq!(client.recv(9).await, publish);
    server.shutdown().await;
}

#[tokio::test]
async fn text_frame_closes_the_connection() {
    let (server, ports) = start(vec![ws_listener(&[])], |_| {}).await;
    let mut client = ws_connect(ports[0], "/mqtt", Some("mqtt")).await;
    client.send_frame(&connect_v311("text")).await;
    assert_eq!(client.recv(4).await, CONNACK_V311_OK);
    // [MQTT-6.0.0-1]
    client
        .socket
        .send(Message::Text("\u{c0}\u{0}".into()))
        .await
        .unwrap();
    client.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn frame_larger_than_the_maximum_packet_size_closes_the_connection() {
    let (server, ports) = start(vec![ws_listener(&[])], |config| {
        config.mqtt.max_packet_size = 1024;
    })
    .await;
    let mut client = ws_connect(ports[0], "/mqtt", Some("mqtt")).await;
    client.send_frame(&connect_v311("big")).await;
    assert_eq!(client.recv(4).await, CONNACK_V311_OK);
    // 513 PINGREQs in one frame: each packet is fine, but the frame (1026 bytes) is larger
    // than a packet may be, and the WebSocket layer refuses it before any is answered.
    let big: Vec<u8> = PINGREQ.repeat(513);
    client.send_frame(&big).await;
    client.expect_closed().await;
    server.shutdown().await;
}

#[tokio::test]
async fn silent_client_on_the_ws_port_does_not_delay_another_clients_connect() {
    let (server, ports) = start(vec![ws_listener(&[])], |config| {
        config.mqtt.connect_timeout_secs = 120;
    })
    .await;
    let silent = TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let mut client = ws_connect(ports[0], "/mqtt", Some("mqtt")).await;
    client.send_frame(&connect_v311("prompt")).await;
    assert_eq!(client.recv(4).await, CONNACK_V311_OK);
    drop(silent);
    server.shutdown().await;
}

/// A WebSocket connection the broker closes at the deadline (no upgrade, or an upgrade and
/// then no CONNECT) is reset like a plain TCP one, so it leaves no TIME_WAIT entry behind.
#[tokio::test]
async fn ws_sockets_closed_at_the_deadline_leave_no_time_wait_behind() {
    let (server, ports) = start(vec![ws_listener(&[])], |config| {
        config.mqtt.connect_timeout_secs = 1;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap());
    }
    let mut upgraded = Vec::new();
    for _ in 0..3 {
        upgraded.push(ws_connect(ports[0], "/mqtt", Some("mqtt")).await);
    }
    let mut buf = [0; 16];
    for stream in &mut silent {
        let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    }
    for client in &mut upgraded {
        client.expect_closed().await;
    }
    drop((silent, upgraded));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(crate::conn_limits::closing_sockets_on(ports[0]), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn wss_client_gets_the_subprotocol_and_a_connack() {
    let pki = Pki::new("wss");
    let server_cert = pki.server("server");
    let mut listener = ws_listener(&[]);
    listener.tls = Some(tls_settings(&server_cert));
    let (server, ports) = start(vec![listener], |_| {}).await;
    let tls = crate::pki::tls_connect(ports[0], client_config(&pki.ca_path, None, ALL_VERSIONS))
        .await
        .expect("TLS handshake");
    let url = format!("wss://127.0.0.1:{}/mqtt", ports[0]);
    let mut client = WsClient::open(tls, &url, Some("mqtt")).await;
    assert_eq!(client.subprotocol.as_deref(), Some("mqtt"));
    client.send_frame(&connect_v311("wss")).await;
    assert_eq!(client.recv(4).await, CONNACK_V311_OK);
    client.send_frame(&PINGREQ).await;
    assert_eq!(client.recv(2).await, PINGRESP);
    server.shutdown().await;
}
