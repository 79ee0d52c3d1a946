//! Methods of the classes midge serves, both directions (the server decodes what clients
//! send and encodes what it answers; tests and tools use the other half), and the basic
//! class's content properties.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::table::FieldTable;
use crate::wire::{Reader, Writer};

/// Class ids.
pub mod class {
    /// connection
    pub const CONNECTION: u16 = 10;
    /// channel
    pub const CHANNEL: u16 = 20;
    /// exchange
    pub const EXCHANGE: u16 = 40;
    /// queue
    pub const QUEUE: u16 = 50;
    /// basic
    pub const BASIC: u16 = 60;
    /// confirm (RabbitMQ extension)
    pub const CONFIRM: u16 = 85;
    /// tx
    pub const TX: u16 = 90;
}

/// One method frame's content. Reserved fields (the old `ticket`, `insist`...) are read
/// and written as the spec lays them out and not kept.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Method {
    ConnectionStart {
        version_major: u8,
        version_minor: u8,
        server_properties: FieldTable,
        mechanisms: Bytes,
        locales: Bytes,
    },
    ConnectionStartOk {
        client_properties: FieldTable,
        mechanism: String,
        response: Bytes,
        locale: String,
    },
    ConnectionSecure {
        challenge: Bytes,
    },
    ConnectionSecureOk {
        response: Bytes,
    },
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionTuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpen {
        virtual_host: String,
    },
    ConnectionOpenOk,
    ConnectionClose {
        reply_code: u16,
        reply_text: String,
        class_id: u16,
        method_id: u16,
    },
    ConnectionCloseOk,
    ConnectionBlocked {
        reason: String,
    },
    ConnectionUnblocked,
    ChannelOpen,
    ChannelOpenOk,
    ChannelFlow {
        active: bool,
    },
    ChannelFlowOk {
        active: bool,
    },
    ChannelClose {
        reply_code: u16,
        reply_text: String,
        class_id: u16,
        method_id: u16,
    },
    ChannelCloseOk,
    ExchangeDeclare {
        exchange: String,
        kind: String,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        no_wait: bool,
        arguments: FieldTable,
    },
    ExchangeDeclareOk,
    ExchangeDelete {
        exchange: String,
        if_unused: bool,
        no_wait: bool,
    },
    ExchangeDeleteOk,
    ExchangeBind {
        destination: String,
        source: String,
        routing_key: String,
        no_wait: bool,
        arguments: FieldTable,
    },
    ExchangeBindOk,
    ExchangeUnbind {
        destination: String,
        source: String,
        routing_key: String,
        no_wait: bool,
        arguments: FieldTable,
    },
    ExchangeUnbindOk,
    QueueDeclare {
        queue: String,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        no_wait: bool,
        arguments: FieldTable,
    },
    QueueDeclareOk {
        queue: String,
        message_count: u32,
        consumer_count: u32,
    },
    QueueBind {
        queue: String,
        exchange: String,
        routing_key: String,
        no_wait: bool,
        arguments: FieldTable,
    },
    QueueBindOk,
    QueuePurge {
        queue: String,
        no_wait: bool,
    },
    QueuePurgeOk {
        message_count: u32,
    },
    QueueDelete {
        queue: String,
        if_unused: bool,
        if_empty: bool,
        no_wait: bool,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    QueueUnbind {
        queue: String,
        exchange: String,
        routing_key: String,
        arguments: FieldTable,
    },
    QueueUnbindOk,
    BasicQos {
        prefetch_size: u32,
        prefetch_count: u16,
        global: bool,
    },
    BasicQosOk,
    BasicConsume {
        queue: String,
        consumer_tag: String,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        no_wait: bool,
        arguments: FieldTable,
    },
    BasicConsumeOk {
        consumer_tag: String,
    },
    BasicCancel {
        consumer_tag: String,
        no_wait: bool,
    },
    BasicCancelOk {
        consumer_tag: String,
    },
    BasicPublish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
        immediate: bool,
    },
    BasicReturn {
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
    },
    BasicDeliver {
        consumer_tag: String,
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
    },
    BasicGet {
        queue: String,
        no_ack: bool,
    },
    BasicGetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        message_count: u32,
    },
    BasicGetEmpty,
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReject {
        delivery_tag: u64,
        requeue: bool,
    },
    BasicRecoverAsync {
        requeue: bool,
    },
    BasicRecover {
        requeue: bool,
    },
    BasicRecoverOk,
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    ConfirmSelect {
        no_wait: bool,
    },
    ConfirmSelectOk,
    TxSelect,
    TxSelectOk,
    TxCommit,
    TxCommitOk,
    TxRollback,
    TxRollbackOk,
}

impl Method {
    /// (class id, method id).
    pub fn ids(&self) -> (u16, u16) {
        use Method::*;
        use class::*;
        match self {
            ConnectionStart { .. } => (CONNECTION, 10),
            ConnectionStartOk { .. } => (CONNECTION, 11),
            ConnectionSecure { .. } => (CONNECTION, 20),
            ConnectionSecureOk { .. } => (CONNECTION, 21),
            ConnectionTune { .. } => (CONNECTION, 30),
            ConnectionTuneOk { .. } => (CONNECTION, 31),
            ConnectionOpen { .. } => (CONNECTION, 40),
            ConnectionOpenOk => (CONNECTION, 41),
            ConnectionClose { .. } => (CONNECTION, 50),
            ConnectionCloseOk => (CONNECTION, 51),
            ConnectionBlocked { .. } => (CONNECTION, 60),
            ConnectionUnblocked => (CONNECTION, 61),
            ChannelOpen => (CHANNEL, 10),
            ChannelOpenOk => (CHANNEL, 11),
            ChannelFlow { .. } => (CHANNEL, 20),
            ChannelFlowOk { .. } => (CHANNEL, 21),
            ChannelClose { .. } => (CHANNEL, 40),
            ChannelCloseOk => (CHANNEL, 41),
            ExchangeDeclare { .. } => (EXCHANGE, 10),
            ExchangeDeclareOk => (EXCHANGE, 11),
            ExchangeDelete { .. } => (EXCHANGE, 20),
            ExchangeDeleteOk => (EXCHANGE, 21),
            ExchangeBind { .. } => (EXCHANGE, 30),
            ExchangeBindOk => (EXCHANGE, 31),
            ExchangeUnbind { .. } => (EXCHANGE, 40),
            ExchangeUnbindOk => (EXCHANGE, 51),
            QueueDeclare { .. } => (QUEUE, 10),
            QueueDeclareOk { .. } => (QUEUE, 11),
            QueueBind { .. } => (QUEUE, 20),
            QueueBindOk => (QUEUE, 21),
            QueuePurge { .. } => (QUEUE, 30),
            QueuePurgeOk { .. } => (QUEUE, 31),
            QueueDelete { .. } => (QUEUE, 40),
            QueueDeleteOk { .. } => (QUEUE, 41),
            QueueUnbind { .. } => (QUEUE, 50),
            QueueUnbindOk => (QUEUE, 51),
            BasicQos { .. } => (BASIC, 10),
            BasicQosOk => (BASIC, 11),
            BasicConsume { .. } => (BASIC, 20),
            BasicConsumeOk { .. } => (BASIC, 21),
            BasicCancel { .. } => (BASIC, 30),
            BasicCancelOk { .. } => (BASIC, 31),
            BasicPublish { .. } => (BASIC, 40),
            BasicReturn { .. } => (BASIC, 50),
            BasicDeliver { .. } => (BASIC, 60),
            BasicGet { .. } => (BASIC, 70),
            BasicGetOk { .. } => (BASIC, 71),
            BasicGetEmpty => (BASIC, 72),
            BasicAck { .. } => (BASIC, 80),
            BasicReject { .. } => (BASIC, 90),
            BasicRecoverAsync { .. } => (BASIC, 100),
            BasicRecover { .. } => (BASIC, 110),
            BasicRecoverOk => (BASIC, 111),
            BasicNack { .. } => (BASIC, 120),
            ConfirmSelect { .. } => (CONFIRM, 10),
            ConfirmSelectOk => (CONFIRM, 11),
            TxSelect => (TX, 10),
            TxSelectOk => (TX, 11),
            TxCommit => (TX, 20),
            TxCommitOk => (TX, 21),
            TxRollback => (TX, 30),
            TxRollbackOk => (TX, 31),
        }
    }

    /// The spec's name, `class.method`, for reply texts and logs.
    pub fn name(&self) -> &'static str {
        let (c, m) = self.ids();
        name_of(c, m).unwrap_or("unknown")
    }

    /// Whether a content header and body frames follow this method.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish { .. }
                | Method::BasicReturn { .. }
                | Method::BasicDeliver { .. }
                | Method::BasicGetOk { .. }
        )
    }

    /// Decodes a method frame's payload.
    pub fn decode(payload: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let class_id = r.u16("method class")?;
        let method_id = r.u16("method id")?;
        let what = name_of(class_id, method_id).ok_or(DecodeError::UnknownMethod {
            class: class_id,
            method: method_id,
        })?;
        let method = decode_args(class_id, method_id, &mut r, what)?;
        // Trailing bytes are tolerated, as RabbitMQ does: a newer client may add fields.
        Ok(method)
    }

    /// Encodes class id, method id and arguments (a method frame's payload).
    pub fn encode(&self, out: &mut BytesMut) {
        let (c, m) = self.ids();
        let mut w = Writer::new(out);
        w.u16(c);
        w.u16(m);
        encode_args(self, &mut w);
    }
}

/// The spec's name of a class and method, if this codec knows it.
pub fn name_of(class_id: u16, method_id: u16) -> Option<&'static str> {
    Some(match (class_id, method_id) {
        (10, 10) => "connection.start",
        (10, 11) => "connection.start-ok",
        (10, 20) => "connection.secure",
        (10, 21) => "connection.secure-ok",
        (10, 30) => "connection.tune",
        (10, 31) => "connection.tune-ok",
        (10, 40) => "connection.open",
        (10, 41) => "connection.open-ok",
        (10, 50) => "connection.close",
        (10, 51) => "connection.close-ok",
        (10, 60) => "connection.blocked",
        (10, 61) => "connection.unblocked",
        (20, 10) => "channel.open",
        (20, 11) => "channel.open-ok",
        (20, 20) => "channel.flow",
        (20, 21) => "channel.flow-ok",
        (20, 40) => "channel.close",
        (20, 41) => "channel.close-ok",
        (40, 10) => "exchange.declare",
        (40, 11) => "exchange.declare-ok",
        (40, 20) => "exchange.delete",
        (40, 21) => "exchange.delete-ok",
        (40, 30) => "exchange.bind",
        (40, 31) => "exchange.bind-ok",
        (40, 40) => "exchange.unbind",
        (40, 51) => "exchange.unbind-ok",
        (50, 10) => "queue.declare",
        (50, 11) => "queue.declare-ok",
        (50, 20) => "queue.bind",
        (50, 21) => "queue.bind-ok",
        (50, 30) => "queue.purge",
        (50, 31) => "queue.purge-ok",
        (50, 40) => "queue.delete",
        (50, 41) => "queue.delete-ok",
        (50, 50) => "queue.unbind",
        (50, 51) => "queue.unbind-ok",
        (60, 10) => "basic.qos",
        (60, 11) => "basic.qos-ok",
        (60, 20) => "basic.consume",
        (60, 21) => "basic.consume-ok",
        (60, 30) => "basic.cancel",
        (60, 31) => "basic.cancel-ok",
        (60, 40) => "basic.publish",
        (60, 50) => "basic.return",
        (60, 60) => "basic.deliver",
        (60, 70) => "basic.get",
        (60, 71) => "basic.get-ok",
        (60, 72) => "basic.get-empty",
        (60, 80) => "basic.ack",
        (60, 90) => "basic.reject",
        (60, 100) => "basic.recover-async",
        (60, 110) => "basic.recover",
        (60, 111) => "basic.recover-ok",
        (60, 120) => "basic.nack",
        (85, 10) => "confirm.select",
        (85, 11) => "confirm.select-ok",
        (90, 10) => "tx.select",
        (90, 11) => "tx.select-ok",
        (90, 20) => "tx.commit",
        (90, 21) => "tx.commit-ok",
        (90, 30) => "tx.rollback",
        (90, 31) => "tx.rollback-ok",
        _ => return None,
    })
}

fn decode_args(c: u16, m: u16, r: &mut Reader, what: &str) -> Result<Method, DecodeError> {
    use Method::*;
    Ok(match (c, m) {
        (10, 10) => ConnectionStart {
            version_major: r.u8(what)?,
            version_minor: r.u8(what)?,
            server_properties: FieldTable::read(r, what)?,
            mechanisms: r.long_str(what)?,
            locales: r.long_str(what)?,
        },
        (10, 11) => ConnectionStartOk {
            client_properties: FieldTable::read(r, what)?,
            mechanism: r.short_str(what)?,
            response: r.long_str(what)?,
            locale: r.short_str(what)?,
        },
        (10, 20) => ConnectionSecure {
            challenge: r.long_str(what)?,
        },
        (10, 21) => ConnectionSecureOk {
            response: r.long_str(what)?,
        },
        (10, 30) => ConnectionTune {
            channel_max: r.u16(what)?,
            frame_max: r.u32(what)?,
            heartbeat: r.u16(what)?,
        },
        (10, 31) => ConnectionTuneOk {
            channel_max: r.u16(what)?,
            frame_max: r.u32(what)?,
            heartbeat: r.u16(what)?,
        },
        (10, 40) => {
            let virtual_host = r.short_str(what)?;
            let _capabilities = r.short_str(what)?;
            let _insist = r.bit(what)?;
            ConnectionOpen { virtual_host }
        }
        (10, 41) => {
            let _known_hosts = r.short_str(what)?;
            ConnectionOpenOk
        }
        (10, 50) => ConnectionClose {
            reply_code: r.u16(what)?,
            reply_text: r.short_str(what)?,
            class_id: r.u16(what)?,
            method_id: r.u16(what)?,
        },
        (10, 51) => ConnectionCloseOk,
        (10, 60) => ConnectionBlocked {
            reason: r.short_str(what)?,
        },
        (10, 61) => ConnectionUnblocked,
        (20, 10) => {
            let _out_of_band = r.short_str(what)?;
            ChannelOpen
        }
        (20, 11) => {
            let _channel_id = r.long_str(what)?;
            ChannelOpenOk
        }
        (20, 20) => ChannelFlow {
            active: r.bit(what)?,
        },
        (20, 21) => ChannelFlowOk {
            active: r.bit(what)?,
        },
        (20, 40) => ChannelClose {
            reply_code: r.u16(what)?,
            reply_text: r.short_str(what)?,
            class_id: r.u16(what)?,
            method_id: r.u16(what)?,
        },
        (20, 41) => ChannelCloseOk,
        (40, 10) => {
            let _ticket = r.u16(what)?;
            ExchangeDeclare {
                exchange: r.short_str(what)?,
                kind: r.short_str(what)?,
                passive: r.bit(what)?,
                durable: r.bit(what)?,
                auto_delete: r.bit(what)?,
                internal: r.bit(what)?,
                no_wait: r.bit(what)?,
                arguments: FieldTable::read(r, what)?,
            }
        }
        (40, 11) => ExchangeDeclareOk,
        (40, 20) => {
            let _ticket = r.u16(what)?;
            ExchangeDelete {
                exchange: r.short_str(what)?,
                if_unused: r.bit(what)?,
                no_wait: r.bit(what)?,
            }
        }
        (40, 21) => ExchangeDeleteOk,
        (40, 30) | (40, 40) => {
            let _ticket = r.u16(what)?;
            let (destination, source, routing_key) =
                (r.short_str(what)?, r.short_str(what)?, r.short_str(what)?);
            let no_wait = r.bit(what)?;
            let arguments = FieldTable::read(r, what)?;
            if m == 30 {
                ExchangeBind {
                    destination,
                    source,
                    routing_key,
                    no_wait,
                    arguments,
                }
            } else {
                ExchangeUnbind {
                    destination,
                    source,
                    routing_key,
                    no_wait,
                    arguments,
                }
            }
        }
        (40, 31) => ExchangeBindOk,
        (40, 51) => ExchangeUnbindOk,
        (50, 10) => {
            let _ticket = r.u16(what)?;
            QueueDeclare {
                queue: r.short_str(what)?,
                passive: r.bit(what)?,
                durable: r.bit(what)?,
                exclusive: r.bit(what)?,
                auto_delete: r.bit(what)?,
                no_wait: r.bit(what)?,
                arguments: FieldTable::read(r, what)?,
            }
        }
        (50, 11) => QueueDeclareOk {
            queue: r.short_str(what)?,
            message_count: r.u32(what)?,
            consumer_count: r.u32(what)?,
        },
        (50, 20) => {
            let _ticket = r.u16(what)?;
            QueueBind {
                queue: r.short_str(what)?,
                exchange: r.short_str(what)?,
                routing_key: r.short_str(what)?,
                no_wait: r.bit(what)?,
                arguments: FieldTable::read(r, what)?,
            }
        }
        (50, 21) => QueueBindOk,
        (50, 30) => {
            let _ticket = r.u16(what)?;
            QueuePurge {
                queue: r.short_str(what)?,
                no_wait: r.bit(what)?,
            }
        }
        (50, 31) => QueuePurgeOk {
            message_count: r.u32(what)?,
        },
        (50, 40) => {
            let _ticket = r.u16(what)?;
            QueueDelete {
                queue: r.short_str(what)?,
                if_unused: r.bit(what)?,
                if_empty: r.bit(what)?,
                no_wait: r.bit(what)?,
            }
        }
        (50, 41) => QueueDeleteOk {
            message_count: r.u32(what)?,
        },
        (50, 50) => {
            let _ticket = r.u16(what)?;
            QueueUnbind {
                queue: r.short_str(what)?,
                exchange: r.short_str(what)?,
                routing_key: r.short_str(what)?,
                arguments: FieldTable::read(r, what)?,
            }
        }
        (50, 51) => QueueUnbindOk,
        (60, 10) => BasicQos {
            prefetch_size: r.u32(what)?,
            prefetch_count: r.u16(what)?,
            global: r.bit(what)?,
        },
        (60, 11) => BasicQosOk,
        (60, 20) => {
            let _ticket = r.u16(what)?;
            BasicConsume {
                queue: r.short_str(what)?,
                consumer_tag: r.short_str(what)?,
                no_local: r.bit(what)?,
                no_ack: r.bit(what)?,
                exclusive: r.bit(what)?,
                no_wait: r.bit(what)?,
                arguments: FieldTable::read(r, what)?,
            }
        }
        (60, 21) => BasicConsumeOk {
            consumer_tag: r.short_str(what)?,
        },
        (60, 30) => BasicCancel {
            consumer_tag: r.short_str(what)?,
            no_wait: r.bit(what)?,
        },
        (60, 31) => BasicCancelOk {
            consumer_tag: r.short_str(what)?,
        },
        (60, 40) => {
            let _ticket = r.u16(what)?;
            BasicPublish {
                exchange: r.short_str(what)?,
                routing_key: r.short_str(what)?,
                mandatory: r.bit(what)?,
                immediate: r.bit(what)?,
            }
        }
        (60, 50) => BasicReturn {
            reply_code: r.u16(what)?,
            reply_text: r.short_str(what)?,
            exchange: r.short_str(what)?,
            routing_key: r.short_str(what)?,
        },
        (60, 60) => BasicDeliver {
            consumer_tag: r.short_str(what)?,
            delivery_tag: r.u64(what)?,
            redelivered: r.bit(what)?,
            exchange: r.short_str(what)?,
            routing_key: r.short_str(what)?,
        },
        (60, 70) => {
            let _ticket = r.u16(what)?;
            BasicGet {
                queue: r.short_str(what)?,
                no_ack: r.bit(what)?,
            }
        }
        (60, 71) => BasicGetOk {
            delivery_tag: r.u64(what)?,
            redelivered: r.bit(what)?,
            exchange: r.short_str(what)?,
            routing_key: r.short_str(what)?,
            message_count: r.u32(what)?,
        },
        (60, 72) => {
            let _cluster_id = r.short_str(what)?;
            BasicGetEmpty
        }
        (60, 80) => BasicAck {
            delivery_tag: r.u64(what)?,
            multiple: r.bit(what)?,
        },
        (60, 90) => BasicReject {
            delivery_tag: r.u64(what)?,
            requeue: r.bit(what)?,
        },
        (60, 100) => BasicRecoverAsync {
            requeue: r.bit(what)?,
        },
        (60, 110) => BasicRecover {
            requeue: r.bit(what)?,
        },
        (60, 111) => BasicRecoverOk,
        (60, 120) => BasicNack {
            delivery_tag: r.u64(what)?,
            multiple: r.bit(what)?,
            requeue: r.bit(what)?,
        },
        (85, 10) => ConfirmSelect {
            no_wait: r.bit(what)?,
        },
        (85, 11) => ConfirmSelectOk,
        (90, 10) => TxSelect,
        (90, 11) => TxSelectOk,
        (90, 20) => TxCommit,
        (90, 21) => TxCommitOk,
        (90, 30) => TxRollback,
        (90, 31) => TxRollbackOk,
        _ => {
            return Err(DecodeError::UnknownMethod {
                class: c,
                method: m,
            });
        }
    })
}

fn encode_args(method: &Method, w: &mut Writer) {
    use Method::*;
    match method {
        ConnectionStart {
            version_major,
            version_minor,
            server_properties,
            mechanisms,
            locales,
        } => {
            w.u8(*version_major);
            w.u8(*version_minor);
            server_properties.write(w);
            w.long_str(mechanisms);
            w.long_str(locales);
        }
        ConnectionStartOk {
            client_properties,
            mechanism,
            response,
            locale,
        } => {
            client_properties.write(w);
            w.short_str(mechanism);
            w.long_str(response);
            w.short_str(locale);
        }
        ConnectionSecure { challenge } => w.long_str(challenge),
        ConnectionSecureOk { response } => w.long_str(response),
        ConnectionTune {
            channel_max,
            frame_max,
            heartbeat,
        }
        | ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat,
        } => {
            w.u16(*channel_max);
            w.u32(*frame_max);
            w.u16(*heartbeat);
        }
        ConnectionOpen { virtual_host } => {
            w.short_str(virtual_host);
            w.short_str("");
            w.bit(false);
        }
        ConnectionOpenOk => w.short_str(""),
        ConnectionClose {
            reply_code,
            reply_text,
            class_id,
            method_id,
        }
        | ChannelClose {
            reply_code,
            reply_text,
            class_id,
            method_id,
        } => {
            w.u16(*reply_code);
            w.short_str(reply_text);
            w.u16(*class_id);
            w.u16(*method_id);
        }
        ConnectionBlocked { reason } => w.short_str(reason),
        ChannelOpen => w.short_str(""),
        ChannelOpenOk => w.long_str(b""),
        ChannelFlow { active } | ChannelFlowOk { active } => w.bit(*active),
        ExchangeDeclare {
            exchange,
            kind,
            passive,
            durable,
            auto_delete,
            internal,
            no_wait,
            arguments,
        } => {
            w.u16(0);
            w.short_str(exchange);
            w.short_str(kind);
            for b in [passive, durable, auto_delete, internal, no_wait] {
                w.bit(*b);
            }
            arguments.write(w);
        }
        ExchangeDelete {
            exchange,
            if_unused,
            no_wait,
        } => {
            w.u16(0);
            w.short_str(exchange);
            w.bit(*if_unused);
            w.bit(*no_wait);
        }
        ExchangeBind {
            destination,
            source,
            routing_key,
            no_wait,
            arguments,
        }
        | ExchangeUnbind {
            destination,
            source,
            routing_key,
            no_wait,
            arguments,
        } => {
            w.u16(0);
            w.short_str(destination);
            w.short_str(source);
            w.short_str(routing_key);
            w.bit(*no_wait);
            arguments.write(w);
        }
        QueueDeclare {
            queue,
            passive,
            durable,
            exclusive,
            auto_delete,
            no_wait,
            arguments,
        } => {
            w.u16(0);
            w.short_str(queue);
            for b in [passive, durable, exclusive, auto_delete, no_wait] {
                w.bit(*b);
            }
            arguments.write(w);
        }
        QueueDeclareOk {
            queue,
            message_count,
            consumer_count,
        } => {
            w.short_str(queue);
            w.u32(*message_count);
            w.u32(*consumer_count);
        }
        QueueBind {
            queue,
            exchange,
            routing_key,
            no_wait,
            arguments,
        } => {
            w.u16(0);
            w.short_str(queue);
            w.short_str(exchange);
            w.short_str(routing_key);
            w.bit(*no_wait);
            arguments.write(w);
        }
        QueuePurge { queue, no_wait } => {
            w.u16(0);
            w.short_str(queue);
            w.bit(*no_wait);
        }
        QueuePurgeOk { message_count } | QueueDeleteOk { message_count } => w.u32(*message_count),
        QueueDelete {
            queue,
            if_unused,
            if_empty,
            no_wait,
        } => {
            w.u16(0);
            w.short_str(queue);
            w.bit(*if_unused);
            w.bit(*if_empty);
            w.bit(*no_wait);
        }
        QueueUnbind {
            queue,
            exchange,
            routing_key,
            arguments,
        } => {
            w.u16(0);
            w.short_str(queue);
            w.short_str(exchange);
            w.short_str(routing_key);
            arguments.write(w);
        }
        BasicQos {
            prefetch_size,
            prefetch_count,
            global,
        } => {
            w.u32(*prefetch_size);
            w.u16(*prefetch_count);
            w.bit(*global);
        }
        BasicConsume {
            queue,
            consumer_tag,
            no_local,
            no_ack,
            exclusive,
            no_wait,
            arguments,
        } => {
            w.u16(0);
            w.short_str(queue);
            w.short_str(consumer_tag);
            for b in [no_local, no_ack, exclusive, no_wait] {
                w.bit(*b);
            }
            arguments.write(w);
        }
        BasicConsumeOk { consumer_tag } | BasicCancelOk { consumer_tag } => {
            w.short_str(consumer_tag)
        }
        BasicCancel {
            consumer_tag,
            no_wait,
        } => {
            w.short_str(consumer_tag);
            w.bit(*no_wait);
        }
        BasicPublish {
            exchange,
            routing_key,
            mandatory,
            immediate,
        } => {
            w.u16(0);
            w.short_str(exchange);
            w.short_str(routing_key);
            w.bit(*mandatory);
            w.bit(*immediate);
        }
        BasicReturn {
            reply_code,
            reply_text,
            exchange,
            routing_key,
        } => {
            w.u16(*reply_code);
            w.short_str(reply_text);
            w.short_str(exchange);
            w.short_str(routing_key);
        }
        BasicDeliver {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        } => {
            w.short_str(consumer_tag);
            w.u64(*delivery_tag);
            w.bit(*redelivered);
            w.short_str(exchange);
            w.short_str(routing_key);
        }
        BasicGet { queue, no_ack } => {
            w.u16(0);
            w.short_str(queue);
            w.bit(*no_ack);
        }
        BasicGetOk {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count,
        } => {
            w.u64(*delivery_tag);
            w.bit(*redelivered);
            w.short_str(exchange);
            w.short_str(routing_key);
            w.u32(*message_count);
        }
        BasicGetEmpty => w.short_str(""),
        BasicAck {
            delivery_tag,
            multiple,
        } => {
            w.u64(*delivery_tag);
            w.bit(*multiple);
        }
        BasicReject {
            delivery_tag,
            requeue,
        } => {
            w.u64(*delivery_tag);
            w.bit(*requeue);
        }
        BasicRecoverAsync { requeue } | BasicRecover { requeue } => w.bit(*requeue),
        BasicNack {
            delivery_tag,
            multiple,
            requeue,
        } => {
            w.u64(*delivery_tag);
            w.bit(*multiple);
            w.bit(*requeue);
        }
        ConfirmSelect { no_wait } => w.bit(*no_wait),
        ConnectionCloseOk | ConnectionUnblocked | ChannelCloseOk | ExchangeDeclareOk
        | ExchangeDeleteOk | ExchangeBindOk | ExchangeUnbindOk | QueueBindOk | QueueUnbindOk
        | BasicQosOk | BasicRecoverOk | ConfirmSelectOk | TxSelect | TxSelectOk | TxCommit
        | TxCommitOk | TxRollback | TxRollbackOk => {}
    }
}

/// The basic class's content properties (spec 1.8.2, property flags bit 15 down to 2).
#[derive(Debug, Clone, Default, PartialEq)]
#[allow(missing_docs)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

impl BasicProperties {
    pub(crate) fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        const W: &str = "content header properties";
        let flags = r.u16(W)?;
        if flags & 1 != 0 {
            // A continuation word: the basic class has only 14 properties.
            return Err(DecodeError::Syntax(format!(
                "{W}: unexpected continuation flag"
            )));
        }
        let on = |bit: u16| flags & (1 << bit) != 0;
        let mut p = Self::default();
        let s = |r: &mut Reader, bit| -> Result<Option<String>, DecodeError> {
            if on(bit) {
                r.short_str(W).map(Some)
            } else {
                Ok(None)
            }
        };
        p.content_type = s(r, 15)?;
        p.content_encoding = s(r, 14)?;
        if on(13) {
            p.headers = Some(FieldTable::read(r, W)?);
        }
        if on(12) {
            p.delivery_mode = Some(r.u8(W)?);
        }
        if on(11) {
            p.priority = Some(r.u8(W)?);
        }
        p.correlation_id = s(r, 10)?;
        p.reply_to = s(r, 9)?;
        p.expiration = s(r, 8)?;
        p.message_id = s(r, 7)?;
        if on(6) {
            p.timestamp = Some(r.u64(W)?);
        }
        p.kind = s(r, 5)?;
        p.user_id = s(r, 4)?;
        p.app_id = s(r, 3)?;
        p.cluster_id = s(r, 2)?;
        Ok(p)
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        let mut flags = 0u16;
        let mut set = |bit: u16, present: bool| {
            if present {
                flags |= 1 << bit;
            }
        };
        set(15, self.content_type.is_some());
        set(14, self.content_encoding.is_some());
        set(13, self.headers.is_some());
        set(12, self.delivery_mode.is_some());
        set(11, self.priority.is_some());
        set(10, self.correlation_id.is_some());
        set(9, self.reply_to.is_some());
        set(8, self.expiration.is_some());
        set(7, self.message_id.is_some());
        set(6, self.timestamp.is_some());
        set(5, self.kind.is_some());
        set(4, self.user_id.is_some());
        set(3, self.app_id.is_some());
        set(2, self.cluster_id.is_some());
        w.u16(flags);
        let s = |w: &mut Writer, v: &Option<String>| {
            if let Some(v) = v {
                w.short_str(v);
            }
        };
        s(w, &self.content_type);
        s(w, &self.content_encoding);
        if let Some(h) = &self.headers {
            h.write(w);
        }
        if let Some(v) = self.delivery_mode {
            w.u8(v);
        }
        if let Some(v) = self.priority {
            w.u8(v);
        }
        s(w, &self.correlation_id);
        s(w, &self.reply_to);
        s(w, &self.expiration);
        s(w, &self.message_id);
        if let Some(v) = self.timestamp {
            w.u64(v);
        }
        s(w, &self.kind);
        s(w, &self.user_id);
        s(w, &self.app_id);
        s(w, &self.cluster_id);
    }
}
