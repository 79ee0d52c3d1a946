//! MQTT over WebSocket, client side: the upgrade, offering the `mqtt` subprotocol, over an
//! open (TCP or TLS) stream. The byte-stream view of the upgraded socket is
//! [`midge_ws_stream::WsByteStream`], which the broker uses too.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};

pub use midge_ws_stream::WsByteStream;
use midge_ws_stream::to_io;

use crate::Error;

/// Runs the upgrade for `url` over an open (TCP or TLS) stream.
pub(crate) async fn connect<S>(url: &str, stream: S) -> Result<WsByteStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
    Ok(WsByteStream::new(socket))
}
