"""Queue arguments with RabbitMQ's semantics, with pika: x-message-ttl, per-message
expiration, x-max-length with drop-head and reject-publish, x-max-length-bytes,
x-expires, unsupported arguments and queue types, and the equivalence check.

Prints one JSON line of what the client observed; crates/broker/tests/it/amqp.rs asserts
on it. Every wait is bounded by common.WAIT.
"""

import argparse
import time

import pika
import pika.exceptions

from common import WAIT, emit


def amqp(host, port):
    params = pika.ConnectionParameters(
        host=host, port=port, credentials=pika.PlainCredentials("guest", "guest")
    )
    return pika.BlockingConnection(params)


def channel_error(conn, action):
    """Runs `action` on a fresh channel; the channel error it gets, or None."""
    ch = conn.channel()
    try:
        action(ch)
    except pika.exceptions.ChannelClosedByBroker as e:
        return [e.reply_code, e.reply_text]
    ch.close()
    return None


def drain(ch, name):
    """Every message ready in `name`, acknowledged, oldest first."""
    out = []
    while True:
        method, _props, body = ch.basic_get(name, auto_ack=True)
        if method is None:
            return out
        out.append(body.decode())


def count(ch, name):
    return ch.queue_declare(name, passive=True).method.message_count


def wait_until(check):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--amqp-port", type=int, required=True)
    a = p.parse_args()
    result = {}
    conn = amqp(a.host, a.amqp_port)
    ch = conn.channel()

    # x-message-ttl: a message older than the queue's TTL is gone; per-message
    # expiration likewise, whichever is lower wins.
    ch.queue_declare("ttl", arguments={"x-message-ttl": 1000})
    ch.basic_publish("", "ttl", b"short")
    ch.basic_publish("", "ttl", b"per-message", pika.BasicProperties(expiration="100"))
    time.sleep(1.2)
    ch.basic_publish("", "ttl", b"fresh")
    ch.basic_publish("", "ttl", b"long-expiration", pika.BasicProperties(expiration="60000"))
    result["ttl_count"] = count(ch, "ttl")
    result["ttl"] = drain(ch, "ttl")

    # x-max-length with the default overflow, drop-head: the oldest go.
    ch.queue_declare("maxlen", arguments={"x-max-length": 2})
    for body in [b"a", b"b", b"c"]:
        ch.basic_publish("", "maxlen", body)
    result["drop_head"] = drain(ch, "maxlen")
    # reject-publish: the newest are refused.
    ch.queue_declare("reject", arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    for body in [b"a", b"b", b"c"]:
        ch.basic_publish("", "reject", body)
    result["reject_publish"] = drain(ch, "reject")
    # With confirms, a message reject-publish refuses is nacked (the others acked).
    cch = conn.channel()
    cch.confirm_delivery()
    cch.queue_declare("reject-confirm", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    cch.basic_publish("", "reject-confirm", b"kept")
    try:
        cch.basic_publish("", "reject-confirm", b"refused")
        result["reject_confirm"] = "acked"
    except pika.exceptions.NackError:
        result["reject_confirm"] = "nacked"
    result["reject_confirm_kept"] = drain(cch, "reject-confirm")
    # x-max-length-bytes: 10 bytes hold two 4-byte bodies, not three.
    ch.queue_declare("maxbytes", arguments={"x-max-length-bytes": 10})
    for body in [b"aaaa", b"bbbb", b"cccc"]:
        ch.basic_publish("", "maxbytes", body)
    result["max_bytes"] = drain(ch, "maxbytes")
    # Unacknowledged messages do not count against x-max-length (RabbitMQ counts ready).
    ch.queue_declare("unacked-len", arguments={"x-max-length": 1})
    ch.basic_publish("", "unacked-len", b"first")
    held = ch.basic_get("unacked-len", auto_ack=False)
    ch.basic_publish("", "unacked-len", b"second")
    result["unacked_len"] = [held[2].decode(), count(ch, "unacked-len")]
    ch.basic_ack(held[0].delivery_tag)

    # x-expires: an unused queue is deleted; one with a consumer is not.
    ch.queue_declare("expiring", arguments={"x-expires": 300})
    ch.queue_declare("consumed", arguments={"x-expires": 300})
    tag = ch.basic_consume("consumed", lambda *_a: None)
    gone = wait_until(
        lambda: channel_error(conn, lambda c: c.queue_declare("expiring", passive=True))
        is not None
    )
    result["expired_queue_gone"] = gone
    result["consumed_queue_kept"] = (
        channel_error(conn, lambda c: c.queue_declare("consumed", passive=True)) is None
    )
    ch.basic_cancel(tag)

    # Refused: queue types other than classic, arguments midge does not honour, bad values.
    result["quorum"] = channel_error(
        conn, lambda c: c.queue_declare("qq", durable=True, arguments={"x-queue-type": "quorum"})
    )
    result["stream"] = channel_error(
        conn, lambda c: c.queue_declare("sq", durable=True, arguments={"x-queue-type": "stream"})
    )
    result["dlx"] = channel_error(
        conn, lambda c: c.queue_declare("dq", arguments={"x-dead-letter-exchange": "dlx"})
    )
    result["negative_ttl"] = channel_error(
        conn, lambda c: c.queue_declare("nt", arguments={"x-message-ttl": -1})
    )
    # Accepted and ignored, as clients commonly send it.
    result["lazy"] = channel_error(
        conn,
        lambda c: c.queue_declare(
            "lazy", arguments={"x-queue-mode": "lazy", "x-queue-type": "classic"}
        ),
    )
    # Equivalence: the same arguments again are fine, other ones (or none) are not.
    result["same_again"] = channel_error(
        conn, lambda c: c.queue_declare("ttl", arguments={"x-message-ttl": 1000})
    )
    result["other_ttl"] = channel_error(
        conn, lambda c: c.queue_declare("ttl", arguments={"x-message-ttl": 1100})
    )
    result["passive_ignores_args"] = channel_error(
        conn, lambda c: c.queue_declare("ttl", passive=True)
    )
    conn.close()
    emit(result)


if __name__ == "__main__":
    main()
