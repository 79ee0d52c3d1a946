"""The seeds' RabbitMQ MQTT <-> AMQP examples, with pika (AMQP 0-9-1) and paho (MQTT).

Prints one JSON line of what the clients observed; crates/broker/tests/it/amqp.rs asserts
on it. Every wait is bounded by common.WAIT.
"""

import argparse
import queue
import time

import paho.mqtt.client as mqtt
import pika
import pika.exceptions

from common import WAIT, emit


def mqtt_client(host, port, name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.username_pw_set("guest", "guest")
    got = queue.Queue()
    c.on_message = lambda _c, _u, m: got.put(m)
    c.connect(host, port, 60)
    c.loop_start()
    return c, got


def subscribe(c, topic):
    done = queue.Queue()
    c.on_subscribe = lambda *_a: done.put(True)
    c.subscribe(topic, qos=1)
    done.get(timeout=WAIT)


def amqp(host, port):
    params = pika.ConnectionParameters(
        host=host, port=port, credentials=pika.PlainCredentials("guest", "guest")
    )
    return pika.BlockingConnection(params)


def get(ch, name):
    """basic.get until a message comes, within WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(name, auto_ack=False)
        if method is not None:
            return method, props, body
        time.sleep(0.02)
    raise TimeoutError(f"nothing in queue {name}")


def describe(method, props, body):
    headers = props.headers or {}
    return {
        "exchange": method.exchange,
        "routing_key": method.routing_key,
        "redelivered": method.redelivered,
        "body": body.decode(),
        "delivery_mode": props.delivery_mode,
        "mqtt_qos": headers.get("x-mqtt-publish-qos"),
        "content_type": props.content_type,
        "correlation_id": props.correlation_id,
        "reply_to": props.reply_to,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--amqp-port", type=int, required=True)
    a = p.parse_args()
    result = {}

    conn = amqp(a.host, a.amqp_port)
    ch = conn.channel()
    ch.confirm_delivery()
    sub, got = mqtt_client(a.host, a.port, "seed-sub")
    pub, _ = mqtt_client(a.host, a.port, "seed-pub")

    # Seed 002, 5.1: paho publishes hello/mqtt; queue lalalala bound with hello.mqtt.
    ch.queue_declare("lalalala", durable=True)
    ch.queue_bind("lalalala", "amq.topic", "hello.mqtt")
    pub.publish("hello/mqtt", "hello mqtt", qos=0).wait_for_publish(WAIT)
    pub.publish("hello/mqtt", "hello mqtt qos1", qos=1).wait_for_publish(WAIT)
    m0 = get(ch, "lalalala")
    ch.basic_ack(m0[0].delivery_tag)
    m1 = get(ch, "lalalala")
    ch.basic_ack(m1[0].delivery_tag)
    result["mqtt_to_amqp"] = [describe(*m0), describe(*m1)]

    # Seed 002, 5.2: AMQP publishes to amq.topic hello.amqp; MQTT subscribes hello/amqp.
    subscribe(sub, "hello/amqp")
    ch.basic_publish(
        "amq.topic",
        "hello.amqp",
        b"hello amqp",
        pika.BasicProperties(
            delivery_mode=2,
            content_type="text/plain",
            correlation_id="req-1",
            reply_to="replies.seed",
            headers={"origin": "pika"},
        ),
    )
    m = got.get(timeout=WAIT)
    props = m.properties
    result["amqp_to_mqtt"] = {
        "topic": m.topic,
        "payload": m.payload.decode(),
        "qos": m.qos,
        "content_type": getattr(props, "ContentType", None),
        "correlation_data": getattr(props, "CorrelationData", b"").decode(),
        "response_topic": getattr(props, "ResponseTopic", None),
        "user_properties": getattr(props, "UserProperty", []),
    }

    # Seed 000's mapping table, both ways.
    ch.queue_declare("mapping", exclusive=True)
    ch.queue_bind("mapping", "amq.topic", "home.*.light")
    ch.queue_bind("mapping", "amq.topic", "sensors.#")
    for topic in ["sensors/temp/room1", "home/kitchen/light", "home/a/b/light", "sensors"]:
        pub.publish(topic, topic, qos=1).wait_for_publish(WAIT)
    keys = []
    for _ in range(3):
        method, _props, _body = get(ch, "mapping")
        keys.append(method.routing_key)
        ch.basic_ack(method.delivery_tag)
    result["mapping_to_amqp"] = keys
    result["mapping_left"] = ch.queue_declare("mapping", passive=True).method.message_count
    subscribe(sub, "sensors/#")
    ch.basic_publish("amq.topic", "sensors.temp.room1", b"t")
    result["mapping_to_mqtt"] = got.get(timeout=WAIT).topic

    # Unroutable with mandatory: basic.return, which pika raises with confirms on.
    try:
        ch.basic_publish("amq.topic", "nobody.here", b"x", mandatory=True)
        result["unroutable"] = "published"
    except pika.exceptions.UnroutableError:
        result["unroutable"] = "returned"

    # Passive declares: amq.topic and "" exist; an unknown one closes only its channel.
    ch.exchange_declare("amq.topic", passive=True)
    ch.exchange_declare("", passive=True)
    bad = conn.channel()
    try:
        bad.exchange_declare("no-such-exchange", passive=True)
        result["passive_unknown"] = None
    except pika.exceptions.ChannelClosedByBroker as e:
        result["passive_unknown"] = [e.reply_code, e.reply_text]
    try:
        conn.channel().exchange_declare("x", exchange_type="fanout")
        result["fanout"] = None
    except pika.exceptions.ChannelClosedByBroker as e:
        result["fanout"] = [e.reply_code, e.reply_text]
    result["other_channel_open"] = ch.is_open

    # Default exchange, prefetch, redelivery after a channel closes unacknowledged.
    work = conn.channel()
    work.queue_declare("work")
    for i in range(3):
        ch.basic_publish("", "work", f"job{i}".encode())
    work.basic_qos(prefetch_count=2)
    seen = []
    work.basic_consume("work", lambda c, m, p, b: seen.append((m.delivery_tag, b.decode())))
    deadline = time.monotonic() + WAIT
    while len(seen) < 2 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.3)
    result["prefetched"] = [b for _, b in seen]
    work.close()
    again = conn.channel()
    redelivered = []
    for _ in range(3):
        method, props, body = get(again, "work")
        redelivered.append([body.decode(), method.redelivered])
        again.basic_ack(method.delivery_tag)
    result["redelivered"] = redelivered

    # nack with requeue comes back redelivered; reject without requeue drops it.
    again.basic_publish("", "work", b"n")
    method, _p, _b = get(again, "work")
    again.basic_nack(method.delivery_tag, requeue=True)
    method, _p, body = get(again, "work")
    result["nack_requeued"] = [body.decode(), method.redelivered]
    again.basic_reject(method.delivery_tag, requeue=False)
    result["after_reject"] = again.queue_declare("work", passive=True).method.message_count
    result["purged"] = again.queue_purge("work").method.message_count
    result["deleted"] = again.queue_delete("work").method.message_count

    # ack with multiple settles every earlier tag: closing the channel requeues nothing.
    multi = conn.channel()
    multi.queue_declare("multi")
    for i in range(3):
        multi.basic_publish("", "multi", f"m{i}".encode())
    tags = [get(multi, "multi")[0].delivery_tag for _ in range(3)]
    multi.basic_ack(tags[-1], multiple=True)
    multi.close()
    result["after_multiple_ack"] = ch.queue_declare("multi", passive=True).method.message_count

    # auto_delete: the queue goes with its last consumer.
    auto = conn.channel()
    auto.queue_declare("auto", auto_delete=True)
    tag = auto.basic_consume("auto", lambda *_a: None)
    auto.basic_cancel(tag)
    try:
        conn.channel().queue_declare("auto", passive=True)
        result["auto_deleted"] = False
    except pika.exceptions.ChannelClosedByBroker as e:
        result["auto_deleted"] = e.reply_code == 404

    # Consumers of one queue on two connections share it: A holds one unacknowledged
    # message (prefetch 1), so what comes next goes to B; when A's channel closes, its
    # message goes to B, redelivered.
    conn_b = amqp(a.host, a.amqp_port)
    chan_a, chan_b = conn.channel(), conn_b.channel()
    chan_a.queue_declare("shared")
    chan_a.basic_qos(prefetch_count=1)
    got_a, got_b = [], []
    chan_a.basic_consume("shared", lambda c, m, p, b: got_a.append(b.decode()))
    ch.basic_publish("", "shared", b"s1")
    deadline = time.monotonic() + WAIT
    while not got_a and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    chan_b.basic_consume(
        "shared",
        lambda c, m, p, b: (got_b.append([b.decode(), m.redelivered]), c.basic_ack(m.delivery_tag)),
    )
    ch.basic_publish("", "shared", b"s2")
    ch.basic_publish("", "shared", b"s3")
    deadline = time.monotonic() + WAIT
    while len(got_b) < 2 and time.monotonic() < deadline:
        conn_b.process_data_events(time_limit=0.05)
    chan_a.close()
    deadline = time.monotonic() + WAIT
    while len(got_b) < 3 and time.monotonic() < deadline:
        conn_b.process_data_events(time_limit=0.05)
    result["shared_a"] = got_a
    result["shared_b"] = got_b
    conn_b.close()

    sub.loop_stop()
    pub.loop_stop()
    conn.close()

    # The exclusive queue went with its connection.
    conn = amqp(a.host, a.amqp_port)
    try:
        conn.channel().queue_declare("mapping", passive=True)
        result["exclusive_deleted"] = False
    except pika.exceptions.ChannelClosedByBroker as e:
        result["exclusive_deleted"] = e.reply_code == 404
    conn.close()
    emit(result)


if __name__ == "__main__":
    main()
