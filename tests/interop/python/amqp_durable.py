"""Durable AMQP queues across a broker restart, with pika (and paho for the MQTT side).

`--phase before` declares queues, binds, publishes with confirms, consumes a little and
leaves one message unacknowledged; the broker is then killed and started again, and
`--phase after` looks at what survived. Each phase prints one JSON line;
crates/midge/tests/amqp_persistence.rs asserts on them. Every wait is bounded by
common.WAIT.
"""

import argparse
import queue
import time

import paho.mqtt.client as mqtt
import pika
import pika.exceptions

from common import WAIT, emit

ARGS = {"x-max-length": 100, "x-message-ttl": 3_600_000}


def amqp(host, port):
    params = pika.ConnectionParameters(
        host=host, port=port, credentials=pika.PlainCredentials("guest", "guest")
    )
    return pika.BlockingConnection(params)


def get(ch, name, auto_ack=False):
    """basic.get until a message comes, within WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(name, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        time.sleep(0.02)
    raise TimeoutError(f"nothing in queue {name}")


def channel_error(conn, action):
    """Runs `action` on a fresh channel; the channel error it gets, or None."""
    ch = conn.channel()
    try:
        action(ch)
    except pika.exceptions.ChannelClosedByBroker as e:
        return [e.reply_code, e.reply_text]
    ch.close()
    return None


def persistent(body):
    return pika.BasicProperties(delivery_mode=2), body


def before(a):
    conn = amqp(a.host, a.amqp_port)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("orders", durable=True, arguments=ARGS)
    ch.queue_bind("orders", "amq.topic", "hello.mqtt")
    ch.queue_bind("orders", "amq.topic", "sensors.#")
    ch.queue_declare("transient-q", durable=False)
    ch.queue_declare("excl-durable", durable=True, exclusive=True)
    # Persistent messages survive; the transient one does not (as in RabbitMQ).
    for body in [b"m1", b"m2", b"m3", b"m4"]:
        props, body = persistent(body)
        ch.basic_publish("amq.topic", "hello.mqtt", body, props)
    ch.basic_publish(
        "amq.topic", "hello.mqtt", b"transient", pika.BasicProperties(delivery_mode=1)
    )
    ch.basic_publish("", "orders", b"m5", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "transient-q", b"t", pika.BasicProperties(delivery_mode=2))
    # m1 acknowledged (gone for good); m2 delivered and left unacknowledged.
    m1 = get(ch, "orders")
    ch.basic_ack(m1[0].delivery_tag)
    m2 = get(ch, "orders")
    # A confirmed publish after the ack: with durability "sync" its confirm comes once
    # everything recorded before it (the ack too) is committed, so the kill that follows
    # cannot lose the ack.
    ch.queue_declare("marker", durable=True)
    ch.basic_publish("", "marker", b"marker", pika.BasicProperties(delivery_mode=2))
    emit(
        {
            "got": [m1[2].decode(), m2[2].decode()],
            "orders": ch.queue_declare("orders", passive=True).method.message_count,
        }
    )
    # The broker is killed while this connection is open, m2 unacknowledged: the test
    # kills it once this line is read, and this process is killed with it.
    time.sleep(60)


def after(a):
    result = {}
    conn = amqp(a.host, a.amqp_port)
    ch = conn.channel()
    ok = ch.queue_declare("orders", passive=True).method
    result["orders_ready"] = ok.message_count
    result["transient_q"] = channel_error(
        conn, lambda c: c.queue_declare("transient-q", passive=True)
    )
    result["excl_durable"] = channel_error(
        conn, lambda c: c.queue_declare("excl-durable", passive=True)
    )
    # The same declaration is accepted; other arguments are refused, as RabbitMQ does.
    ch.queue_declare("orders", durable=True, arguments=ARGS)
    result["inequivalent"] = channel_error(
        conn,
        lambda c: c.queue_declare(
            "orders", durable=True, arguments={"x-max-length": 5, "x-message-ttl": 3_600_000}
        ),
    )
    # The bindings came back: MQTT publishes reach the queue.
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="durable-pub")
    pub.connect(a.host, a.port, 60)
    pub.loop_start()
    pub.publish("hello/mqtt", "after", qos=1).wait_for_publish(WAIT)
    pub.publish("sensors/t", "sensor", qos=1).wait_for_publish(WAIT)
    pub.loop_stop()
    pub.disconnect()
    got = []
    while True:
        m = get(ch, "orders")
        ch.basic_ack(m[0].delivery_tag)
        got.append([m[2].decode(), m[0].redelivered, m[1].delivery_mode])
        if m[2] == b"sensor":
            break
    result["orders"] = got
    result["marker"] = get(ch, "marker", auto_ack=True)[2].decode()
    conn.close()
    emit(result)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--amqp-port", type=int, required=True)
    p.add_argument("--phase", choices=["before", "after"], required=True)
    a = p.parse_args()
    if a.phase == "before":
        before(a)
    else:
        after(a)


if __name__ == "__main__":
    main()
