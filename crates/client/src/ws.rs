//! MQTT over WebSocket, client side: the HTTP upgrade offering the `mqtt` subprotocol, and
//! a byte-stream view of the socket so the same framing runs over TCP and WebSocket. Each
//! write goes out as one binary message; reads yield binary message payloads in order
//! (MQTT does not align packets with messages [MQTT-6.0.0-2]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::Error;
use crate::transport::BoxStream;

/// A WebSocket seen as a byte stream.
#[derive(Debug)]
pub(crate) struct WsByteStream {
    socket: WebSocketStream<BoxStream>,
    /// What is left of the last binary message received.
    pending: Bytes,
    close_sent: bool,
}

impl WsByteStream {
    /// Runs the upgrade for `url` over an open (TCP or TLS) stream.
    pub(crate) async fn connect(url: &str, stream: BoxStream) -> Result<Self, Error> {
        let mut request = url
            .into_client_request()
            .map_err(|e| Error::Unsupported(format!("WebSocket URL {url}: {e}")))?;
        // [MQTT-6.0.0-3] the client offers the "mqtt" subprotocol; tungstenite then
        // insists that the server selects it.
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("mqtt"),
        );
        let (socket, _response) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| Error::network(format!("WebSocket upgrade at {url}"), to_io(e)))?;
        Ok(Self {
            socket,
            pending: Bytes::new(),
            close_sent: false,
        })
    }
}

fn to_io(error: WsError) -> io::Error {
    match error {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl AsyncRead for WsByteStream {
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
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // [MQTT-6.0.0-1] MQTT travels in binary frames only.
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

impl AsyncWrite for WsByteStream {
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
        Pin::new(&mut this.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(to_io)
    }

    /// Sends our close frame; the caller bounds how long it may take.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(Pin::new(&mut this.socket).poll_close(cx)).map_err(to_io)?;
            this.close_sent = true;
        }
        Poll::Ready(Ok(()))
    }
}
