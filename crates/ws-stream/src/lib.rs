//! MQTT over WebSocket: a byte-stream view of a WebSocket whose upgrade is done, shared by
//! the midge client (which runs the client-side upgrade, offering the `mqtt` subprotocol)
//! and the broker (which runs its own server-side upgrade), so neither depends on the
//! other. Each write goes out as one binary message; reads yield binary message payloads
//! in order, so the same streaming decoder runs over TCP and WebSocket (MQTT does not align
//! packets with messages [MQTT-6.0.0-2]).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
#![deny(missing_debug_implementations)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Largest WebSocket message written; a larger write goes out as several messages.
const MAX_OUTGOING_MESSAGE: usize = 256 * 1024;

/// A WebSocket seen as a byte stream.
#[derive(Debug)]
pub struct WsByteStream<S> {
    socket: WebSocketStream<S>,
    /// What is left of the last binary message received.
    pending: Bytes,
    /// Our close frame is out.
    close_sent: bool,
}

impl<S> WsByteStream<S> {
    /// Wraps a WebSocket whose upgrade is done.
    pub fn new(socket: WebSocketStream<S>) -> Self {
        Self {
            socket,
            pending: Bytes::new(),
            close_sent: false,
        }
    }
}

/// A WebSocket error as the `io::Error` a byte stream reports.
pub fn to_io(error: WsError) -> io::Error {
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
                // End of stream, or the peer's close frame (tungstenite answers it).
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // [MQTT-6.0.0-1] MQTT travels in binary frames only; any other data frame
                // closes the connection.
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

    /// Sends our close frame, then waits for the peer's: RFC 6455 7.1.1 has the server close
    /// TCP after that, so a client answering our close frame does not write to a closed
    /// socket. The caller bounds the wait.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(Pin::new(&mut this.socket).poll_close(cx)).map_err(to_io)?;
            this.close_sent = true;
        }
        loop {
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                None | Some(Err(_) | Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                // Whatever the peer still sends is too late to be read.
                Some(Ok(_)) => {}
            }
        }
    }
}
