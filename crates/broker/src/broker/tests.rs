//! The registry and the broker together: attach, detach and expiry through
//! [`Broker`], which carries out the registry's effects (sessions ended, wills published);
//! and a broker assembled with another `Routing`, which sees what the seam promises.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use midge_proto::{QoS, Will, WillProperties};

use super::*;
use crate::mailbox::Control;
use crate::registry::{TIMER_SLACK, TIMERS_PER_SLOT};

fn will(delay: u32) -> Will {
    Will {
        topic: "wills/c".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: WillProperties {
            will_delay_interval: Some(delay),
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn a_session_expiring_while_a_connection_attaches_leaves_it_a_live_mailbox() {
    let broker = Broker::new(Config::default());
    let id: Arc<str> = "c".into();
    let mut state = broker.attach(id.clone(), true, 1, 0).await.state;
    // A finished attach leaves no lock behind in the slot.
    assert!(!broker.registry.attach_lock_held(&id));
    state.expiry_interval = 1;
    broker.detach(1, state, Some((will(60), 60)), 0);
    // A connection with this client id is attaching (it holds the slot's lock) when
    // the session expires, so the slot must stay.
    let attaching = broker.registry.hold_attach_lock(&id);
    broker.tick(1_000);
    assert_eq!(
        broker.retained.matching("wills/c", 1_000).len(),
        1,
        "will published at session end"
    );
    drop(attaching);

    let next = broker.attach(id, false, 2, 2_000).await;
    assert!(!next.session_present);
    assert!(!next.state.mailbox.is_closed());
}

/// Issue 9, defect 3: every park pushed a timer and stale ones left only at their
/// deadline, so a client reconnecting in a loop with a long expiry grew the heap
/// forever.
#[tokio::test]
async fn reconnect_loops_do_not_grow_the_timer_heap() {
    let broker = Broker::new(Config::default());
    for round in 0..20_000u64 {
        let id: Arc<str> = format!("c{}", round % 10).into();
        let mut state = broker.attach(id, false, round, round).await.state;
        state.expiry_interval = 3600;
        broker.detach(round, state, Some((will(600), 600)), round);
    }
    let (timers, slots) = broker.registry.timers_and_slots();
    assert_eq!(slots, 10);
    assert!(
        timers <= TIMERS_PER_SLOT * slots + TIMER_SLACK,
        "{} timers for {} sessions",
        timers,
        slots
    );
    // The live deadlines survived the rebuilds: each session still expires on time,
    // with its will.
    broker.tick(20_000 + 3_600_000);
    assert_eq!(broker.registry.parked_len(), 0);
    assert_eq!(broker.retained.matching("wills/c", 0).len(), 1);
}

/// Issue 9, defect 8: parked sessions had no cap. At `max_parked_sessions` a session
/// ends with its connection (counted) instead of being kept; resumed ones free a place.
#[tokio::test]
async fn parked_sessions_stop_at_the_limit_and_the_rest_end_counted() {
    let mut config = Config::default();
    config.limits.max_parked_sessions = 3;
    let broker = Broker::new(config);
    for n in 0..5u64 {
        let id: Arc<str> = format!("c{n}").into();
        let mut state = broker.attach(id, false, n, 0).await.state;
        state.expiry_interval = 3600;
        broker.detach(n, state, None, 0);
    }
    assert_eq!(broker.registry.parked_len(), 3);
    assert_eq!(broker.stats.snapshot().sessions_not_parked, 2);
    // c3 and c4 were not kept; c0 is, and resuming it frees its place for c3.
    assert!(
        !broker
            .attach("c4".into(), false, 10, 0)
            .await
            .session_present
    );
    let resumed = broker.attach("c0".into(), false, 11, 0).await;
    assert!(resumed.session_present);
    assert_eq!(broker.registry.parked_len(), 2);
    let mut state = broker.attach("c3".into(), false, 12, 0).await.state;
    state.expiry_interval = 3600;
    broker.detach(12, state, None, 0);
    assert_eq!(broker.registry.parked_len(), 3);
    assert_eq!(broker.stats.snapshot().sessions_not_parked, 2);
    // Expiry frees places too.
    broker.tick(3_600_000 + 1);
    assert_eq!(broker.registry.parked_len(), 0);
}

#[tokio::test]
async fn a_delayed_will_is_cancelled_when_the_session_resumes_in_time() {
    let broker = Broker::new(Config::default());
    let id: Arc<str> = "c".into();
    let mut state = broker.attach(id.clone(), true, 1, 0).await.state;
    state.expiry_interval = 600;
    broker.detach(1, state, Some((will(30), 30)), 0);
    let resumed = broker.attach(id, false, 2, 10_000).await;
    assert!(resumed.session_present);
    broker.tick(40_000);
    assert!(
        broker.retained.is_empty(),
        "[MQTT-3.1.3-9] no will after a timely resume"
    );
}

#[tokio::test]
async fn a_delayed_will_is_published_after_its_delay() {
    let broker = Broker::new(Config::default());
    let id: Arc<str> = "c".into();
    let mut state = broker.attach(id.clone(), true, 1, 0).await.state;
    state.expiry_interval = 600;
    broker.detach(1, state, Some((will(30), 30)), 0);
    broker.tick(29_999);
    assert!(broker.retained.is_empty());
    broker.tick(30_000);
    assert_eq!(broker.retained.len(), 1);
    assert_eq!(
        broker.registry.parked_len(),
        1,
        "the session itself lives on"
    );
}

#[tokio::test]
async fn clean_start_ends_the_parked_session_and_its_subscriptions() {
    let broker = Broker::new(Config::default());
    let id: Arc<str> = "c".into();
    let mut state = broker.attach(id.clone(), true, 1, 0).await.state;
    state.expiry_interval = 600;
    broker
        .router
        .subscribe(&state.mailbox, "t", Default::default(), None);
    state.subscriptions.insert(
        "t".into(),
        crate::model::SubscriptionRecord {
            options: Default::default(),
            identifier: None,
        },
    );
    broker.detach(1, state, None, 0);
    assert_eq!(
        broker.router.len(),
        1,
        "parked session keeps its subscription"
    );
    let fresh = broker.attach(id, true, 2, 1_000).await;
    assert!(!fresh.session_present);
    assert!(broker.router.is_empty());
    assert!(!fresh.state.mailbox.is_closed());
}

/// A connection that ends on its own (EOF, DISCONNECT) right after a new connection
/// told it to go never reads that instruction; the new connection must not wait the
/// whole takeover timeout for an answer.
#[tokio::test(start_paused = true)]
async fn takeover_racing_with_the_old_connection_ending_does_not_wait_for_the_timeout() {
    let broker = Broker::new(Config::default());
    let client_id: Arc<str> = Arc::from("racer");
    let mut old = broker.attach(client_id.clone(), true, 1, 0).await;
    old.state.expiry_interval = 60;
    let mailbox = old.state.mailbox.clone();

    let new = tokio::spawn({
        let broker = broker.clone();
        let client_id = client_id.clone();
        async move { broker.attach(client_id, false, 2, 0).await }
    });
    // The new connection has told the old one to go...
    let mut told = false;
    for _ in 0..100 {
        if let Some(control) = mailbox.take_control() {
            told = matches!(control, Control::TakeOver(_));
            mailbox.send_control(control);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(told, "the new connection sent the takeover instruction");
    // ...which ends without reading it, as on EOF.
    broker.detach(1, old.state, None, 0);

    // Virtual time: were the new connection still waiting for TAKEOVER_TIMEOUT, this
    // one-second timeout would fire first.
    let attached = tokio::time::timeout(Duration::from_secs(1), new)
        .await
        .expect("attach finished without waiting for the takeover timeout")
        .expect("attach task");
    assert!(attached.session_present, "the parked session is resumed");
    assert_eq!(broker.registry.connected_len(), 1);
}

/// Routing as a cluster would wrap it: every change of interest and every publish passes
/// through the `Routing` the broker was assembled with.
#[derive(Debug)]
struct RecordingRouter {
    local: Router,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RecordingRouter {
    fn note(&self, what: String) {
        self.seen.lock().unwrap().push(what);
    }
}

impl Routing for RecordingRouter {
    fn subscribe(
        &self,
        mailbox: &Arc<Mailbox>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        self.note(format!("interest {filter}"));
        self.local.subscribe(mailbox, filter, options, identifier)
    }

    fn unsubscribe(&self, filter: &str, client_id: &str) -> bool {
        self.note(format!("no interest {filter}"));
        self.local.unsubscribe(filter, client_id)
    }

    fn unsubscribe_mailbox(&self, filter: &str, mailbox: &Arc<Mailbox>) -> bool {
        self.note(format!("no interest {filter}"));
        self.local.unsubscribe_mailbox(filter, mailbox)
    }

    fn route(&self, message: &Arc<Message>, limits: &QueueLimits) -> RouteOutcome {
        self.note(format!("route {}", message.topic));
        self.local.route(message, limits)
    }

    fn hand_over_all(
        &self,
        deliveries: &[Delivery],
        leaving: &str,
        limits: &QueueLimits,
    ) -> Vec<bool> {
        self.local.hand_over_all(deliveries, leaving, limits)
    }

    fn compact(&self) -> usize {
        self.local.compact()
    }

    fn len(&self) -> usize {
        self.local.len()
    }

    fn subscriptions_page(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
        keep: &mut dyn FnMut(&str, &str) -> bool,
    ) -> Vec<crate::router::SubscriptionSummary> {
        self.local.subscriptions_page(after, limit, keep)
    }
}

#[tokio::test]
async fn sessions_publishes_and_ended_sessions_go_through_the_assembled_routing() {
    let seen = Arc::default();
    let parts = Parts {
        router: Box::new(RecordingRouter {
            local: Router::new(Default::default()),
            seen: Arc::clone(&seen),
        }),
        retained: Box::<RetainedStore>::default(),
        ownership: Box::new(LocalOwnership),
    };
    let broker = Broker::assemble(Config::default(), None, parts);
    let id: Arc<str> = "c".into();
    let mut state = broker.attach(id.clone(), true, 1, 0).await.state;
    let mailbox = state.mailbox.clone();
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    assert!(!SessionEnv::subscribe(
        &*broker, &mailbox, "a/+", options, None
    ));
    state.subscriptions.insert(
        "a/+".into(),
        crate::model::SubscriptionRecord {
            options,
            identifier: None,
        },
    );
    let message = Message::internal("a/b".into(), Bytes::from_static(b"x"), false, 0);
    assert_eq!(SessionEnv::publish(&*broker, message), 1);
    assert_eq!(mailbox.len(), 1, "the local router behind it delivered");
    // Expiry 0: the session ends with its connection, and its interest goes.
    broker.detach(1, state, None, 0);
    assert_eq!(
        *seen.lock().unwrap(),
        ["interest a/+", "route a/b", "no interest a/+"]
    );
    assert!(broker.router.is_empty());
}

/// A reload swaps the configuration while connections read it and publishes read the
/// queue limits: from many threads, each read is one whole configuration, and the last
/// swap is what stays.
#[test]
fn the_configuration_swaps_while_many_threads_read_it() {
    let consistent = |n: u16| {
        let mut config = Config::default();
        config.mqtt.max_inflight = n;
        config.mqtt.max_queued_messages = usize::from(n);
        config.limits.max_parked_sessions = usize::from(n);
        Arc::new(config)
    };
    let broker = Broker::new(Config::clone(&consistent(1)));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let config = broker.config();
                    assert_eq!(
                        usize::from(config.mqtt.max_inflight),
                        config.mqtt.max_queued_messages
                    );
                    assert!((1..=2000).contains(&broker.queue_limits().max_messages));
                }
            });
        }
        for n in 1..=2000 {
            broker.set_config(consistent(n));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(broker.config().mqtt.max_inflight, 2000);
    assert_eq!(broker.queue_limits().max_messages, 2000);
}
