//! `GET /api/v1/live?filter=...`: the messages that match a topic filter, as they are
//! published, as server-sent events (one `data:` line of JSON each). The admin API
//! subscribes a mailbox of its own (under a client id no MQTT client can have) for as
//! long as the response is read, and unsubscribes when the reader goes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, header};
use base64ct::Encoding;
use bytes::Bytes;
use midge_proto::{QoS, SubscriptionOptions};
use tokio::sync::mpsc;

use super::AdminContext;
use crate::mailbox::Mailbox;
use crate::model::Delivery;

/// Live views open at once; more are refused (429), so they cannot pile up.
pub(super) const MAX_LIVE_VIEWS: usize = 16;
/// A comment line this often keeps proxies from closing a quiet stream, and notices a
/// reader that left.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Deliveries taken from the mailbox per wake-up.
const BATCH: usize = 64;

static NEXT_VIEW: AtomicU64 = AtomicU64::new(1);

/// The response body: what the subscription task sends.
struct Events(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Events {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|event| event.map(Ok))
    }
}

/// Subscribes to the validated `filter` and returns the event stream; `None` when
/// [`MAX_LIVE_VIEWS`] are open.
pub(super) fn open(context: &AdminContext, filter: String) -> Option<Response<Body>> {
    let open = &context.live_views;
    if open.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE_VIEWS {
        open.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    // MQTT strings cannot hold U+0000 [MQTT-1.5.4-2]: no client can take this id over.
    let id: Arc<str> = format!(
        "\u{0}admin-live-{}",
        NEXT_VIEW.fetch_add(1, Ordering::Relaxed)
    )
    .into();
    let mailbox = Mailbox::new(id);
    mailbox.set_online(true);
    let options = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        ..SubscriptionOptions::default()
    };
    context
        .broker
        .router
        .subscribe(&mailbox, &filter, options, None);
    let (tx, rx) = mpsc::channel(BATCH);
    tokio::spawn(pump(context.clone(), mailbox, filter, tx));
    let mut response = Response::new(Body::from_stream(Events(rx)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Some(response)
}

/// Moves deliveries from the mailbox to the response until the reader goes.
async fn pump(
    context: AdminContext,
    mailbox: Arc<Mailbox>,
    filter: String,
    tx: mpsc::Sender<Bytes>,
) {
    let hello = format!(": live view of {filter}\n\n");
    let mut open = tx.send(Bytes::from(hello)).await.is_ok();
    let mut batch = Vec::with_capacity(BATCH);
    while open {
        tokio::select! {
            _ = mailbox.notified() => {}
            _ = tokio::time::sleep(KEEPALIVE) => {
                open = tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_ok();
                continue;
            }
            _ = tx.closed() => break,
        }
        loop {
            batch.clear();
            mailbox.pop_batch(BATCH, BATCH, &mut batch);
            if batch.is_empty() {
                break;
            }
            for delivery in batch.drain(..) {
                if tx.send(event(&delivery)).await.is_err() {
                    open = false;
                    break;
                }
            }
            if !open {
                break;
            }
        }
    }
    context.broker.router.unsubscribe_mailbox(&filter, &mailbox);
    mailbox.close();
    context.live_views.fetch_sub(1, Ordering::Relaxed);
}

fn event(delivery: &Delivery) -> Bytes {
    let m = &delivery.message;
    let json = serde_json::json!({
        "topic": m.topic,
        "payload": std::str::from_utf8(&m.payload).ok(),
        "payload_base64": base64ct::Base64::encode_string(&m.payload),
        "qos": m.qos as u8,
        "retain": m.retain,
    });
    Bytes::from(format!("data: {json}\n\n"))
}
