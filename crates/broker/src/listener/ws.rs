//! MQTT over WebSocket: the HTTP upgrade (path check, `mqtt` subprotocol) and an adapter
//! that turns the WebSocket's binary messages back into a byte stream, so the connection
//! task reads it with the same streaming decoder as TCP. A message may carry part of a
//! packet or several packets [MQTT-6.0.0-2]; the decoder does not care where frames end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Subprotocols the broker accepts, preferred first. `mqttv3.1` is what MQTT 3.1 era
/// clients (and some libraries still) offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Bytes read from the socket at a time during the WebSocket exchange. tungstenite's
/// default (128 KiB, allocated up front) would make idle connections expensive.
const READ_BUFFER: usize = 8 * 1024;

/// Largest WebSocket message the broker sends; a larger write buffer goes out as several.
const MAX_OUTGOING_MESSAGE: usize = 256 * 1024;

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
    Ok(WsByteStream {
        socket,
        pending: Bytes::new(),
        close_sent: false,
    })
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

/// A WebSocket seen as a byte stream: reads yield the payloads of binary messages in order,
/// each write is sent as one binary message.
#[derive(Debug)]
pub(crate) struct WsByteStream<S> {
    socket: WebSocketStream<S>,
    /// What is left of the last binary message received.
    pending: Bytes,
    /// Our close frame is out.
    close_sent: bool,
}

fn to_io(error: WsError) -> io::Error {
    match error {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                // End of stream, or the client's close frame (tungstenite answers it).
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // [MQTT-6.0.0-1] any other data frame closes the connection.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket frame: MQTT uses binary frames only",
                    )));
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_OUTGOING_MESSAGE);
        let message = Message::Binary(Bytes::copy_from_slice(buf.get(..n).unwrap_or(buf)));
        Pin::new(&mut this.socket)
            .start_send(message)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(to_io)
    }

    /// Sends a close frame, then waits for the client's: RFC 6455 7.1.1 has the server close
    /// TCP after that, so a client answering our close frame does not write to a closed
    /// socket. The connection bounds the wait.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(Pin::new(&mut this.socket).poll_close(cx)).map_err(to_io)?;
            this.close_sent = true;
        }
        loop {
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                None | Some(Err(_) | Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                // Whatever the client still sends is too late to be served.
                Some(Ok(_)) => {}
            }
        }
    }
}
