use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use midge_proto::{QoS, SubscriptionOptions};
use tokio::sync::mpsc;

use super::*;
use crate::config::QueueFullPolicy;
use crate::mailbox::Mailbox;
use crate::model::QueueLimits;

const LIMITS: QueueLimits = QueueLimits {
    max_messages: 0,
    max_bytes: 0,
    policy: QueueFullPolicy::DropNew,
    queue_qos0_offline: true,
};

fn routing(
    queue: usize,
) -> (
    ClusterRouting,
    mpsc::Receiver<Arc<Message>>,
    mpsc::UnboundedReceiver<Interest>,
) {
    let (routing, forward, interest, _) = routing_shared(queue);
    (routing, forward, interest)
}

/// Drains what a [`ClusterRouting`] told the shared-subscription tasks, each as
/// `+group`, `-group` or `hand over N`.
type SharedCommands = Box<dyn FnMut() -> Vec<String> + Send>;

/// [`routing`], with what it tells the shared-subscription tasks.
fn routing_shared(
    queue: usize,
) -> (
    ClusterRouting,
    mpsc::Receiver<Arc<Message>>,
    mpsc::UnboundedReceiver<Interest>,
    SharedCommands,
) {
    let (forward, forward_rx) = mpsc::channel(queue);
    let (interest, interest_rx) = mpsc::unbounded_channel();
    let (shared, mut shared_rx) = shared::SharedHandle::for_tests();
    let routing = ClusterRouting {
        local: Arc::new(Router::new(Default::default())),
        forward,
        interest,
        stats: Arc::default(),
        shared,
    };
    let commands: SharedCommands = Box::new(move || {
        let mut out = Vec::new();
        while let Ok(c) = shared_rx.try_recv() {
            out.push(format!("{c:?}"));
        }
        out
    });
    (routing, forward_rx, interest_rx, commands)
}

fn changes(rx: &mut mpsc::UnboundedReceiver<Interest>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(change) = rx.try_recv() {
        out.push(format!("{change:?}"));
    }
    out
}

fn options() -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    }
}

fn message(topic: &str) -> Arc<Message> {
    Arc::new(Message::internal(
        topic.into(),
        Bytes::from_static(b"x"),
        false,
        0,
    ))
}

#[test]
fn interest_follows_new_and_removed_subscriptions_only() {
    let (routing, _forward, mut interest, mut shared) = routing_shared(8);
    let a = Mailbox::new("a".into());
    assert!(!routing.subscribe(&a, "s/#", options(), None));
    assert_eq!(changes(&mut interest), ["+mq.m.s", "+mq.m.s.>"]);
    // Replacing a subscription's options changes no interest.
    assert!(routing.subscribe(&a, "s/#", SubscriptionOptions::default(), None));
    assert!(changes(&mut interest).is_empty());
    assert!(!routing.subscribe(&a, "$share/g/x/+", options(), None));
    assert!(
        changes(&mut interest).is_empty(),
        "a shared group is served through its queue group"
    );
    assert_eq!(shared(), ["+$share/g/x/+"]);
    assert!(!routing.subscribe(&a, "$SYS/#", options(), None));
    assert!(changes(&mut interest).is_empty(), "$SYS stays local");
    assert!(routing.unsubscribe("s/#", "a"));
    assert!(!routing.unsubscribe("s/#", "a"));
    assert_eq!(changes(&mut interest), ["-mq.m.s", "-mq.m.s.>"]);
    let b = Mailbox::new("a".into());
    assert!(!routing.unsubscribe_mailbox("$share/g/x/+", &b), "not b's");
    assert!(routing.unsubscribe_mailbox("$share/g/x/+", &a));
    assert!(changes(&mut interest).is_empty());
    assert_eq!(shared(), ["-$share/g/x/+"]);
}

#[test]
fn route_delivers_locally_and_forwards_once_except_sys() {
    let (routing, mut forward, _interest) = routing(1);
    let a = Mailbox::new("a".into());
    routing.subscribe(&a, "#", options(), None);
    routing.subscribe(&a, "$SYS/#", options(), None);
    let limits = LIMITS;
    let outcome = routing.route(&message("t"), &limits);
    assert_eq!((outcome.delivered, outcome.dropped), (1, 0));
    assert_eq!(forward.try_recv().unwrap().topic, "t");
    let outcome = routing.route(&message("$SYS/x"), &limits);
    assert_eq!((outcome.delivered, outcome.dropped), (1, 0));
    assert!(forward.try_recv().is_err(), "$SYS is not forwarded");
    // The queue holds one: the second is counted as dropped, the local copy still goes.
    routing.route(&message("t"), &limits);
    let outcome = routing.route(&message("t"), &limits);
    assert_eq!((outcome.delivered, outcome.dropped), (1, 1));
    assert_eq!(routing.stats.forward_dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn window_drops_repeats_and_keeps_late_firsts() {
    let mut w = Window::new(1);
    assert!(w.first_time(1));
    assert!(w.first_time(3));
    assert!(!w.first_time(3));
    assert!(!w.first_time(1));
    assert!(w.first_time(2), "late but first");
    assert!(!w.first_time(2));
    assert!(w.first_time(3 + DEDUP_WINDOW - 1));
    assert!(w.first_time(4), "still inside the window");
    assert!(!w.first_time(3), "now outside: taken as a duplicate");
    assert!(w.first_time(10 * DEDUP_WINDOW), "a jump clears the window");
    assert!(w.first_time(10 * DEDUP_WINDOW - 5));
    assert!(!w.first_time(10 * DEDUP_WINDOW));
}

#[test]
fn window_slots_are_reused_after_wrapping() {
    let mut w = Window::new(1);
    for seq in 1..=3 * DEDUP_WINDOW {
        assert!(w.first_time(seq), "{seq}");
    }
    for seq in 2 * DEDUP_WINDOW + 1..=3 * DEDUP_WINDOW {
        assert!(!w.first_time(seq), "{seq}");
    }
}

/// Many threads subscribing, unsubscribing and routing at once: the interest changes sent
/// to NATS add up, per subject, to what the router holds at the end, and no route blocks.
#[test]
fn concurrent_churn_keeps_interest_counts_exact() {
    let (routing, mut forward, mut interest, mut shared) = routing_shared(1 << 20);
    let routing = Arc::new(routing);
    let filters = ["a/#", "a/+", "b", "$share/g/a/#", "#"];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let routing = routing.clone();
            std::thread::spawn(move || {
                let mailboxes: Vec<_> = (0..4)
                    .map(|i| Mailbox::new(format!("c{}", i % 2 + t * 10).into()))
                    .collect();
                for n in 0..2000usize {
                    let mailbox = &mailboxes[n % mailboxes.len()];
                    let filter = filters[(n * 7 + t) % filters.len()];
                    match n % 3 {
                        0 => {
                            routing.subscribe(mailbox, filter, options(), None);
                        }
                        1 => {
                            routing.unsubscribe_mailbox(filter, mailbox);
                        }
                        _ => {
                            routing.route(&message("a/b"), &LIMITS);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut net: HashMap<String, i64> = HashMap::new();
    while let Ok(change) = interest.try_recv() {
        match change {
            Interest::Add(s) => *net.entry(s).or_default() += 1,
            Interest::Remove(s) => *net.entry(s).or_default() -= 1,
        }
    }
    for change in shared() {
        let (sign, group) = change.split_at(1);
        *net.entry(group.to_owned()).or_default() += if sign == "+" { 1 } else { -1 };
    }
    let mut expected: HashMap<String, i64> = HashMap::new();
    for summary in routing.subscriptions_page(None, usize::MAX, &mut |_, _| true) {
        if summary.filter.starts_with("$share/") {
            // One count per member, kept by the shared-subscription task.
            *expected.entry(summary.filter.clone()).or_default() += 1;
            continue;
        }
        for subject in subject::filter_to_subjects(&summary.filter) {
            *expected.entry(subject).or_default() += 1;
        }
    }
    net.retain(|_, n| *n != 0);
    assert_eq!(net, expected);
    let mut forwarded = 0;
    while forward.try_recv().is_ok() {
        forwarded += 1;
    }
    assert_eq!(forwarded, 8 * 666, "every route forwarded once");
}

/// Shared groups are served through NATS, the publishing node's members included; what
/// NATS will not carry goes to this node's members directly, once.
#[test]
fn shared_groups_are_left_to_nats_unless_it_cannot_carry_the_message() {
    let (routing, mut forward, _interest, _shared) = routing_shared(1);
    let member = Mailbox::new("m".into());
    let plain = Mailbox::new("p".into());
    routing.subscribe(&member, "$share/g/#", options(), None);
    routing.subscribe(&member, "$share/g/$SYS/#", options(), None);
    routing.subscribe(&plain, "#", options(), None);
    let outcome = routing.route(&message("t"), &LIMITS);
    assert_eq!((outcome.delivered, outcome.dropped), (1, 0));
    assert_eq!(
        (member.len(), plain.len()),
        (0, 1),
        "the member's copy comes via NATS"
    );
    assert_eq!(forward.try_recv().unwrap().topic, "t");
    // Not forwarded: the queue is full, the topic too long, or `$SYS`.
    routing.route(&message("t"), &LIMITS);
    let outcome = routing.route(&message("t"), &LIMITS);
    assert_eq!((outcome.delivered, outcome.dropped), (2, 1));
    assert_eq!(member.len(), 1, "queue full: delivered here");
    forward.try_recv().unwrap();
    let long = "x/".repeat(2000);
    let outcome = routing.route(&message(&long), &LIMITS);
    assert_eq!(outcome.delivered, 2);
    assert_eq!(member.len(), 2, "too long for NATS: delivered here");
    forward.try_recv().unwrap();
    routing.route(&message("$SYS/x"), &LIMITS);
    assert_eq!(member.len(), 3, "$SYS groups are served on the node");
    assert!(forward.try_recv().is_err());
}

#[test]
fn hand_over_tries_local_members_before_other_nodes() {
    let (routing, _forward, _interest, mut shared) = routing_shared(8);
    let leaver = Mailbox::new("leaver".into());
    let other = Mailbox::new("other".into());
    routing.subscribe(&leaver, "$share/g/t", options(), None);
    routing.subscribe(&leaver, "$share/h/t", options(), None);
    routing.subscribe(&other, "$share/g/t", options(), None);
    shared();
    let delivery = |group: &str| Delivery {
        message: message("t"),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: Vec::new(),
        shared: Some(Arc::from(group)),
    };
    let taken = routing.hand_over_all(
        &[delivery("$share/g/t"), delivery("$share/h/t")],
        "leaver",
        &LIMITS,
    );
    assert_eq!(taken, [true, true]);
    assert_eq!(other.len(), 1, "g: the other member here");
    assert_eq!(shared(), ["hand over 1"], "h: no other member here");
}
