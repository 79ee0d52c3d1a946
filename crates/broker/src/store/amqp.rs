//! Durable AMQP queues in the store. A queue's contents are a stored session owned by the
//! queue's mailbox (client id `\0amqp-queue:<name>`, see `amqp_queues`): its bindings
//! are the session's subscriptions and its persistent messages the session's queue rows,
//! journaled by the mailbox as an MQTT session's QoS 1 messages are. What a session lacks,
//! the declaration (flags and arguments), is a row of [`Table::AmqpQueues`] keyed by the
//! queue's name.

use super::codec::{CodecError, Decoder, Encoder};
use super::journal::{Journal, Op};

/// The stored declaration of a durable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AmqpQueueRecord {
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds.
    pub expires: Option<u64>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow` is `reject-publish` (else `drop-head`).
    pub reject_publish: bool,
}

fn put_opt(e: &mut Encoder, v: Option<u64>) {
    match v {
        Some(v) => e.bool(true).u64(v),
        None => e.bool(false),
    };
}

fn get_opt(d: &mut Decoder<'_>, field: &'static str) -> Result<Option<u64>, CodecError> {
    Ok(if d.bool(field)? {
        Some(d.u64(field)?)
    } else {
        None
    })
}

pub(crate) fn encode(r: &AmqpQueueRecord) -> Vec<u8> {
    let mut e = Encoder::default();
    e.bool(r.auto_delete);
    put_opt(&mut e, r.message_ttl);
    put_opt(&mut e, r.expires);
    put_opt(&mut e, r.max_length);
    put_opt(&mut e, r.max_length_bytes);
    e.bool(r.reject_publish);
    e.finish()
}

pub(crate) fn decode(value: &[u8]) -> Result<AmqpQueueRecord, CodecError> {
    let mut d = Decoder::new(value, "amqp queue record");
    let r = AmqpQueueRecord {
        auto_delete: d.bool("auto delete")?,
        message_ttl: get_opt(&mut d, "x-message-ttl")?,
        expires: get_opt(&mut d, "x-expires")?,
        max_length: get_opt(&mut d, "x-max-length")?,
        max_length_bytes: get_opt(&mut d, "x-max-length-bytes")?,
        reject_publish: d.bool("x-overflow")?,
    };
    d.end()?;
    Ok(r)
}

impl Journal {
    /// Records a durable queue's declaration (`Some`) or its deletion (`None`).
    pub fn amqp_queue(&self, name: &str, record: Option<&AmqpQueueRecord>) {
        self.send(Op::AmqpQueue {
            name: name.to_owned(),
            value: record.map(encode),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_truncation_is_an_error() {
        let r = AmqpQueueRecord {
            auto_delete: true,
            message_ttl: Some(0),
            expires: None,
            max_length: Some(7),
            max_length_bytes: Some(u64::MAX),
            reject_publish: true,
        };
        let bytes = encode(&r);
        assert_eq!(decode(&bytes).unwrap(), r);
        assert_eq!(
            decode(&encode(&AmqpQueueRecord::default())).unwrap(),
            AmqpQueueRecord::default()
        );
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "{n} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
