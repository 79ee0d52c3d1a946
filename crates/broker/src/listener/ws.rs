//! MQTT over WebSocket, server side: the HTTP upgrade (path check, `mqtt` subprotocol).
//! The upgraded socket is read and written through `midge_ws_stream::WsByteStream`, which
//! turns binary messages back into a byte stream, so the connection task reads it with the
//! same streaming decoder as TCP. A message may carry part of a packet or several packets
//! [MQTT-6.0.0-2]; the decoder does not care where frames end.

use midge_ws_stream::WsByteStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Subprotocols the broker accepts, preferred first. `mqttv3.1` is what MQTT 3.1 era
/// clients (and some libraries still) offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Bytes read from the socket at a time during the WebSocket exchange. tungstenite's
/// default (128 KiB, allocated up front) would make idle connections expensive.
const READ_BUFFER: usize = 8 * 1024;

/// A WebSocket listener's settings.
#[derive(Debug, Clone)]
pub(crate) struct WsSettings {
    /// Paths that accept the upgrade; any other gets 404.
    pub(crate) paths: Vec<String>,
    /// Largest incoming frame and message: the broker's maximum packet size.
    pub(crate) max_message_size: usize,
}

/// Answers the HTTP upgrade on `stream` and returns the byte-stream view of the WebSocket.
pub(crate) async fn accept<S>(stream: S, settings: &WsSettings) -> Result<WsByteStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(clippy::result_large_err)] // tungstenite's callback signature.
    let callback = |request: &Request, response: Response| upgrade(settings, request, response);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // The connection task flushes after every write; no second buffer is needed.
        .write_buffer_size(0)
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let socket =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsByteStream::new(socket))
}

/// Checks the path and picks the subprotocol for the 101 response.
#[allow(clippy::result_large_err)] // tungstenite's callback signature.
fn upgrade(
    settings: &WsSettings,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let path = request.uri().path();
    if !settings.paths.iter().any(|p| p == path) {
        let mut not_found =
            ErrorResponse::new(Some(format!("no MQTT WebSocket endpoint at {path}\n")));
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        return Err(not_found);
    }
    // [MQTT-6.0.0-4] the subprotocol returned is "mqtt"; echoed only when the client offered
    // it, as RFC 6455 4.2.2 requires.
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    if let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(chosen),
        );
    }
    Ok(response)
}
