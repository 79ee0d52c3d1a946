"""AMQP 0-9-1 <-> MQTT scenarios run unchanged against RabbitMQ (with its MQTT plugin) and
against midge; crates/broker/tests/it/amqp_differential.rs compares what they observe.

Clients: pika (AMQP 0-9-1) and paho-mqtt 2.x speaking MQTT 3.1.1 (the only version Debian's
RabbitMQ 3.10 MQTT plugin speaks). Prints one JSON line: {scenario: observations}. What a
broker is free to choose (server-generated names, consumer tags, reply texts after the
code's name) is normalized here, so two equal transcripts mean the same behaviour. A scenario
that raises records {"exception": ...} instead of its observations, so one failure does not
hide the others. Every wait is bounded by WAIT.

Fences: "nothing else arrived" is observed by sending a last message that must arrive (the
fence) after the ones that must not; once the fence is in, anything routed before it is too.
"""

import argparse
import hashlib
import json
import queue
import re
import sys
import time
import traceback

import struct

import paho.mqtt.client as mqtt
import pika
import pika.data
import pika.exceptions



class SignedByte(int):
    """A header value pika writes as a signed byte ('b'), the type RabbitMQ's MQTT plugin
    gives x-mqtt-publish-qos (pika writes other ints as 32-bit values)."""


_encode_value = pika.data.encode_value


def _encode_signed_byte(pieces, value):
    if isinstance(value, SignedByte):
        pieces.append(struct.pack(">cb", b"b", value))
        return 2
    return _encode_value(pieces, value)


# encode_table looks the function up in its module at each call.
pika.data.encode_value = _encode_signed_byte

WAIT = 5.0
# After the last expected message, how long to look for one that must not come (prefetch).
QUIET = 0.4


class Ctx:
    def __init__(self, host, mqtt_port, amqp_port):
        self.host = host
        self.mqtt_port = mqtt_port
        self.amqp_port = amqp_port
        self.closers = []

    def amqp(self):
        params = pika.ConnectionParameters(
            host=self.host,
            port=self.amqp_port,
            credentials=pika.PlainCredentials("guest", "guest"),
            blocked_connection_timeout=WAIT,
        )
        conn = pika.BlockingConnection(params)
        self.closers.append(lambda: conn.is_open and conn.close())
        return conn

    def mqtt(self, name):
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311
        )
        c.username_pw_set("guest", "guest")
        got = queue.Queue()
        c.on_message = lambda _c, _u, m: got.put(m)
        connected = queue.Queue()
        c.on_connect = lambda _c, _u, _f, rc, _p: connected.put(rc)
        c.connect(self.host, self.mqtt_port, 60)
        c.loop_start()
        rc = connected.get(timeout=WAIT)
        if rc != 0:
            raise RuntimeError(f"MQTT connect refused: {rc}")
        self.closers.append(lambda: (c.disconnect(), c.loop_stop()))
        return Mqtt(c, got)

    def close(self):
        for close in reversed(self.closers):
            try:
                close()
            except Exception:
                pass
        self.closers = []


class Mqtt:
    def __init__(self, client, got):
        self.client = client
        self.got = got

    def subscribe(self, topic, qos=1):
        done = queue.Queue()
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: done.put(codes)
        self.client.subscribe(topic, qos=qos)
        codes = done.get(timeout=WAIT)
        return [int(c.value) if hasattr(c, "value") else int(c) for c in codes]

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)

    def until_fence(self, fence=b"fence"):
        """Messages received before the fence payload (which is not included)."""
        out = []
        deadline = time.monotonic() + WAIT
        while True:
            m = self.got.get(timeout=max(0.01, deadline - time.monotonic()))
            if m.payload == fence:
                return out
            out.append(m)


def body_text(body):
    try:
        text = body.decode()
        if len(text) <= 64 and text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()[:16]}


def plain_value(v):
    """A header value as JSON, keeping its type visible."""
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": v}
    if isinstance(v, float):
        return {"float": v}
    if isinstance(v, dict):
        return {"table": {k: plain_value(x) for k, x in sorted(v.items())}}
    if isinstance(v, list):
        return {"array": [plain_value(x) for x in v]}
    if hasattr(v, "timestamp"):
        return {"timestamp": int(v.timestamp())}
    return v


def props_json(p):
    out = {}
    for name in [
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ]:
        v = getattr(p, name, None)
        if v is not None:
            out[name] = v
    if p.headers:
        out["headers"] = {k: plain_value(v) for k, v in sorted(p.headers.items())}
    return out


def delivery(method, props, body):
    return {
        "exchange": method.exchange,
        "routing_key": method.routing_key,
        "redelivered": method.redelivered,
        "body": body_text(body),
        "props": props_json(props),
    }


def mqtt_msg(m):
    return {"topic": m.topic, "qos": m.qos, "retain": m.retain, "payload": body_text(m.payload)}


def channel_error(e):
    """A broker's channel or connection close, normalized to code and code name."""
    return {"closed": e.reply_code, "name": str(e.reply_text).split(" ")[0]}


def attempt(f):
    """Runs f(); a channel or connection closed by the broker is an observation."""
    try:
        r = f()
        return {"ok": r}
    except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as e:
        return channel_error(e)


def get_one(ch, name, no_ack=False):
    """basic.get until a message comes, within WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(name, auto_ack=no_ack)
        if method is not None:
            return method, props, body
        time.sleep(0.01)
    raise TimeoutError(f"nothing in queue {name}")


def drain_until_fence(ch, name):
    """basic.get everything before the fence body (acknowledged), as deliveries."""
    out = []
    while True:
        method, props, body = get_one(ch, name)
        ch.basic_ack(method.delivery_tag)
        if body == b"fence":
            return out
        out.append(delivery(method, props, body))


def count(ch, name):
    """[message_count, consumer_count]. RabbitMQ counts a message once it is in the queue,
    which a publisher confirm says: channels that count what they published confirm."""
    r = ch.queue_declare(name, passive=True).method
    return [r.message_count, r.consumer_count]


def consume_until(conn, seen, n, quiet=QUIET):
    """Pumps conn until `seen` has n entries, then for `quiet` more seconds."""
    deadline = time.monotonic() + WAIT
    while len(seen) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    end = time.monotonic() + quiet
    while time.monotonic() < end:
        conn.process_data_events(time_limit=0.02)


# ---- scenarios ----


def mapping_mqtt_to_amqp(ctx):
    """MQTT topics as routing keys, and which binding keys match them."""
    conn = ctx.amqp()
    ch = conn.channel()
    bindings = {
        "map-exact": "sensors.temp.room1",
        "map-star": "home.*.light",
        "map-hash": "sensors.#",
        "map-all": "#",
        "map-empty-word": "a..b",
        "map-star-hash": "*.#",
    }
    for q, key in bindings.items():
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, "amq.topic", key)
        ch.queue_bind(q, "amq.topic", "fence")
    pub = ctx.mqtt("diff-map-pub")
    for t in [
        "sensors/temp/room1",
        "sensors/temp/room2",
        "sensors",
        "sensors/x/y/z",
        "home/kitchen/light",
        "home/a/b/light",
        "home//light",
        "homes/kitchen/light",
        "a//b",
        "/lead",
        "trail/",
        "dotted.topic/x",
    ]:
        pub.publish(t, t.encode())
    pub.publish("fence", b"fence")
    return {
        q: [[d["routing_key"], d["body"]] for d in drain_until_fence(ch, q)] for q in bindings
    }


def mapping_amqp_to_mqtt(ctx):
    """Routing keys as MQTT topics, and which MQTT filters match them."""
    filters = ["sensors/temp/room1", "home/+/light", "sensors/#", "#", "+/+"]
    subs = {}
    for i, f in enumerate(filters):
        s = ctx.mqtt(f"diff-map-sub{i}")
        s.subscribe(f)
        s.subscribe("fence")
        subs[f] = s
    conn = ctx.amqp()
    ch = conn.channel()
    for key in [
        "sensors.temp.room1",
        "sensors.temp.room2",
        "sensors",
        "home.kitchen.light",
        "home.a.b.light",
        "home..light",
        "a..b",
        ".lead",
        "trail.",
        "x.y",
    ]:
        ch.basic_publish("amq.topic", key, key.encode())
    ch.basic_publish("amq.topic", "fence", b"fence")
    return {f: [[m.topic, m.payload.decode()] for m in s.until_fence()] for f, s in subs.items()}


def payloads(ctx):
    """Bodies of every size, both ways and AMQP to AMQP (several body frames)."""
    sizes = [0, 1, 256, 4095, 131072, 300000]

    def body(n):
        return bytes((i * 7 + n) % 256 for i in range(n))

    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("pay", exclusive=True)
    ch.queue_bind("pay", "amq.topic", "pay.#")
    ch.queue_bind("pay", "amq.topic", "fence")
    sub = ctx.mqtt("diff-pay-sub")
    sub.subscribe("pay/#")
    sub.subscribe("fence")
    pub = ctx.mqtt("diff-pay-pub")
    for n in sizes:
        pub.publish("pay/mqtt", body(n))
    pub.publish("fence", b"fence")
    from_mqtt = [d["body"] for d in drain_until_fence(ch, "pay")]
    for n in sizes:
        ch.basic_publish("amq.topic", "pay.amqp", body(n))
    ch.basic_publish("amq.topic", "fence", b"fence")
    to_mqtt = [body_text(m.payload) for m in sub.until_fence()]
    from_amqp = [d["body"] for d in drain_until_fence(ch, "pay")]
    for n in sizes:
        ch.basic_publish("", "pay", body(n))
    ch.basic_publish("", "pay", b"fence")
    direct = [d["body"] for d in drain_until_fence(ch, "pay")]
    return {"mqtt_to_amqp": from_mqtt, "amqp_to_mqtt": to_mqtt, "amqp_to_amqp": from_amqp, "default_exchange": direct}


def qos_mqtt_to_amqp(ctx):
    """MQTT QoS as delivery_mode and x-mqtt-publish-qos, and retain."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("qos-in", exclusive=True)
    ch.queue_bind("qos-in", "amq.topic", "q.#")
    ch.queue_bind("qos-in", "amq.topic", "fence")
    pub = ctx.mqtt("diff-qos-pub")
    pub.publish("q/0", b"qos0", qos=0)
    pub.publish("q/1", b"qos1", qos=1)
    pub.publish("q/2", b"qos2", qos=2)
    pub.publish("q/r", b"retained", qos=1, retain=True)
    pub.publish("fence", b"fence")
    got = drain_until_fence(ch, "qos-in")
    pub.publish("q/r", b"", qos=1, retain=True)
    return got


def qos_amqp_to_mqtt(ctx):
    """delivery_mode and x-mqtt-publish-qos as the QoS MQTT subscribers of each QoS get."""
    subs = []
    for qos in range(3):
        s = ctx.mqtt(f"diff-qos-sub{qos}")
        s.subscribe("qa/#", qos=qos)
        # RabbitMQ keeps a client's QoS 0 and QoS 1 subscriptions in two queues, with no
        # order between them: the fence goes by the same QoS.
        s.subscribe("fence", qos=qos)
        subs.append(s)
    conn = ctx.amqp()
    ch = conn.channel()
    def qos_header(qos, **kw):
        return pika.BasicProperties(headers={"x-mqtt-publish-qos": SignedByte(qos)}, **kw)

    cases = [
        ("none", pika.BasicProperties()),
        ("dm1", pika.BasicProperties(delivery_mode=1)),
        ("dm2", pika.BasicProperties(delivery_mode=2)),
        # The header as RabbitMQ's MQTT plugin writes it (a signed byte; other integer
        # types make RabbitMQ 3.10 drop the MQTT subscriber's connection).
        ("h0", qos_header(0)),
        ("h1", qos_header(1)),
        ("h0-dm2", qos_header(0, delivery_mode=2)),
        ("h1-dm1", qos_header(1, delivery_mode=1)),
    ]
    for name, props in cases:
        ch.basic_publish("amq.topic", f"qa.{name}", name.encode(), props)
    ch.basic_publish("amq.topic", "fence", b"fence")
    return {
        f"sub{qos}": [[m.payload.decode(), m.qos, m.retain] for m in s.until_fence()]
        for qos, s in enumerate(subs)
    }


def properties_amqp_to_amqp(ctx):
    """Every basic property through amq.topic and through the default exchange."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("props", exclusive=True)
    ch.queue_bind("props", "amq.topic", "props.#")
    ch.queue_bind("props", "amq.topic", "fence")
    full = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"s": "text", "n": 42, "b": True, "nested": {"k": "v"}, "list": [1, "x"]},
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="replies.here",
        message_id="msg-1",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="diff",
    )
    out = {}
    ch.basic_publish("amq.topic", "props.full", b"full", full)
    ch.basic_publish("amq.topic", "props.bare", b"bare")
    ch.basic_publish("amq.topic", "fence", b"fence")
    out["amq.topic"] = drain_until_fence(ch, "props")
    ch.basic_publish("", "props", b"full", full)
    ch.basic_publish("", "props", b"bare")
    ch.basic_publish("", "props", b"fence")
    out["default"] = drain_until_fence(ch, "props")
    return out


def properties_amqp_to_mqtt(ctx):
    """What an MQTT 3.1.1 subscriber gets of an AMQP message with properties."""
    sub = ctx.mqtt("diff-props-sub")
    sub.subscribe("pm/#")
    sub.subscribe("fence")
    conn = ctx.amqp()
    ch = conn.channel()
    ch.basic_publish(
        "amq.topic",
        "pm.x",
        b"with-props",
        pika.BasicProperties(
            content_type="text/plain", delivery_mode=2, headers={"h": "v"}, expiration="60000"
        ),
    )
    ch.basic_publish("amq.topic", "fence", b"fence")
    return [mqtt_msg(m) for m in sub.until_fence()]


def redelivery(ctx):
    """Unacknowledged deliveries come back, redelivered, when their channel closes."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("redeliver", exclusive=True)
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", "redeliver", f"r{i}".encode())
    consumer = conn.channel()
    seen = []
    consumer.basic_consume("redeliver", lambda c, m, p, b: seen.append((m.delivery_tag, b.decode(), m.redelivered)))
    consume_until(conn, seen, 4, quiet=0)
    consumer.basic_ack(seen[1][0])
    first = [[b, r] for _, b, r in seen]
    consumer.close()
    again = []
    for _ in range(3):
        method, _props, body = get_one(ch, "redeliver")
        again.append([body.decode(), method.redelivered])
        ch.basic_ack(method.delivery_tag)
    # basic.recover puts a channel's unacknowledged messages back too.
    ch.basic_publish("", "redeliver", b"rec")
    method, _props, body = get_one(ch, "redeliver")
    ch.basic_recover(requeue=True)
    method, _props, body = get_one(ch, "redeliver")
    recovered = [body.decode(), method.redelivered]
    ch.basic_ack(method.delivery_tag)
    return {"first": first, "again": again, "recovered": recovered}


def confirms(ctx):
    """Publisher confirms for routed, unroutable and mandatory publishes."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("confirm", exclusive=True)
    ch.queue_bind("confirm", "amq.topic", "conf.routed")
    ch.confirm_delivery()
    out = []

    def pub(exchange, key, mandatory):
        try:
            ch.basic_publish(exchange, key, b"c", mandatory=mandatory)
            return "confirmed"
        except pika.exceptions.UnroutableError as e:
            return ["returned", [[m.method.reply_code, m.method.reply_text, m.method.exchange, m.method.routing_key] for m in e.messages]]
        except pika.exceptions.NackError:
            return "nacked"

    out.append(pub("amq.topic", "conf.routed", False))
    out.append(pub("amq.topic", "conf.routed", True))
    out.append(pub("amq.topic", "conf.nobody", False))
    out.append(pub("amq.topic", "conf.nobody", True))
    out.append(pub("", "confirm", True))
    out.append(pub("", "no-such-queue", False))
    out.append(pub("", "no-such-queue", True))
    out.append(count(ch, "confirm"))
    out.append(attempt(lambda: pub("no-such-exchange", "k", False)))
    return out


def basic_get(ctx):
    """basic.get: empty, message counts, auto-ack and manual ack."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("get", exclusive=True)
    ch.confirm_delivery()
    empty = ch.basic_get("get")[0] is None
    for i in range(3):
        ch.basic_publish("", "get", f"g{i}".encode())
    got = []
    m, p, b = get_one(ch, "get", no_ack=True)
    got.append([b.decode(), m.message_count, m.redelivered, m.exchange, m.routing_key])
    m, p, b = get_one(ch, "get")
    got.append([b.decode(), m.message_count, m.redelivered])
    after_unacked = count(ch, "get")
    ch.basic_ack(m.delivery_tag)
    m, p, b = get_one(ch, "get")
    got.append([b.decode(), m.message_count])
    ch.basic_ack(m.delivery_tag)
    return {"empty": empty, "got": got, "count_with_one_unacked": after_unacked, "end": count(ch, "get"), "missing": attempt(lambda: ch.basic_get("no-such-queue") and None)}


def ack_multiple(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("multi", exclusive=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "multi", f"m{i}".encode())
    consumer = conn.channel()
    seen = []
    consumer.basic_consume("multi", lambda c, m, p, b: seen.append((m.delivery_tag, b.decode())))
    consume_until(conn, seen, 5, quiet=0)
    consumer.basic_ack(seen[2][0], multiple=True)
    consumer.close()
    back = []
    for _ in range(2):
        m, _p, b = get_one(ch, "multi")
        back.append([b.decode(), m.redelivered])
        ch.basic_ack(m.delivery_tag)
    # multiple with tag 0: everything outstanding.
    for i in range(3):
        ch.basic_publish("", "multi", f"z{i}".encode())
    for _ in range(3):
        get_one(ch, "multi")
    ch.basic_ack(0, multiple=True)
    # Counted on the channel that acknowledged: RabbitMQ orders a channel's acks before its
    # later requests, not before another channel's.
    return {"delivered": [b for _, b in seen], "back": back, "after_ack_all": count(ch, "multi")}


def nack_reject(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("nack", exclusive=True)
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", "nack", f"n{i}".encode())
    out = {}
    m, _p, b = get_one(ch, "nack")
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _p, b = get_one(ch, "nack")
    out["nack_requeue"] = [b.decode(), m.redelivered]
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _p, b = get_one(ch, "nack")
    out["reject_requeue"] = [b.decode(), m.redelivered]
    ch.basic_reject(m.delivery_tag, requeue=False)
    out["after_reject_drop"] = count(ch, "nack")
    tags = [get_one(ch, "nack")[0].delivery_tag for _ in range(2)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    out["after_nack_multiple_drop"] = count(ch, "nack")
    for i in range(2):
        ch.basic_publish("", "nack", f"x{i}".encode())
    tags = [get_one(ch, "nack")[0].delivery_tag for _ in range(2)]
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    back = []
    for _ in range(2):
        m, _p, b = get_one(ch, "nack")
        back.append([b.decode(), m.redelivered])
        ch.basic_ack(m.delivery_tag)
    out["nack_multiple_requeue"] = back
    out["unknown_tag"] = attempt(lambda: (ch.basic_ack(999), count(ch, "nack"))[1])
    return out


def prefetch(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("prefetch", exclusive=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "prefetch", f"p{i}".encode())
    c = conn.channel()
    c.basic_qos(prefetch_count=2)
    seen = []
    c.basic_consume("prefetch", lambda ch_, m, p, b: seen.append((m.delivery_tag, b.decode())))
    consume_until(conn, seen, 2)
    held = [b for _, b in seen]
    c.basic_ack(seen[0][0])
    consume_until(conn, seen, 3)
    after_one_ack = [b for _, b in seen]
    c.basic_ack(seen[2][0], multiple=True)
    consume_until(conn, seen, 5)
    after_all = [b for _, b in seen]
    c.basic_ack(seen[-1][0], multiple=True)
    c.close()
    # No limit with automatic acknowledgement.
    for i in range(5):
        ch.basic_publish("", "prefetch", f"a{i}".encode())
    auto = []
    c2 = conn.channel()
    c2.basic_qos(prefetch_count=1)
    c2.basic_consume("prefetch", lambda ch_, m, p, b: auto.append(b.decode()), auto_ack=True)
    consume_until(conn, auto, 5)
    return {"held": held, "after_one_ack": after_one_ack, "after_all": after_all, "auto_ack": auto}


def round_robin(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("rr", exclusive=True)
    ch.confirm_delivery()
    c = conn.channel()
    seen = []
    c.basic_consume("rr", lambda ch_, m, p, b: seen.append(["A", b.decode()]), auto_ack=True, consumer_tag="A")
    c.basic_consume("rr", lambda ch_, m, p, b: seen.append(["B", b.decode()]), auto_ack=True, consumer_tag="B")
    declared = count(ch, "rr")
    for i in range(4):
        ch.basic_publish("", "rr", f"w{i}".encode())
    consume_until(conn, seen, 4, quiet=0)
    return {"declared": declared, "seen": seen}


def mandatory_return(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append([m.reply_code, m.reply_text, m.exchange, m.routing_key, b.decode(), props_json(p)]))
    ch.basic_publish("amq.topic", "ret.nobody", b"r1", pika.BasicProperties(content_type="text/plain"), mandatory=True)
    ch.basic_publish("", "ret-no-queue", b"r2", mandatory=True)
    ch.basic_publish("amq.topic", "ret.nobody", b"not-mandatory")
    ch.queue_declare("ret-fence", exclusive=True)
    ch.basic_publish("", "ret-fence", b"fence", mandatory=True)
    get_one(ch, "ret-fence")
    conn.process_data_events(time_limit=0.05)
    return returned


def purge_delete(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    out = {}
    ch.queue_declare("pd")
    # RabbitMQ counts a queue's messages once they are in: confirms make that so.
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", "pd", b"x")
    out["declare_again"] = [ch.queue_declare("pd").method.message_count, ch.queue_declare("pd").method.consumer_count]
    out["purge"] = ch.queue_purge("pd").method.message_count
    out["purge_empty"] = ch.queue_purge("pd").method.message_count
    for i in range(2):
        ch.basic_publish("", "pd", b"x")
    out["if_empty"] = attempt(lambda: ch.queue_delete("pd", if_empty=True).method.message_count)
    ch = conn.channel()
    tag = ch.basic_consume("pd", lambda *_a: None)
    out["if_unused"] = attempt(lambda: ch.queue_delete("pd", if_unused=True).method.message_count)
    ch = conn.channel()
    out["delete"] = ch.queue_delete("pd").method.message_count
    out["after_delete"] = attempt(lambda: count(ch, "pd"))
    ch = conn.channel()
    out["delete_missing"] = attempt(lambda: ch.queue_delete("pd-missing").method.message_count)
    ch = conn.channel()
    out["purge_missing"] = attempt(lambda: ch.queue_purge("pd-missing").method.message_count)
    del tag
    return out


def exclusive(ctx):
    a = ctx.amqp()
    b = ctx.amqp()
    ca = a.channel()
    ca.queue_declare("excl", exclusive=True)
    ca.confirm_delivery()
    ca.basic_publish("", "excl", b"mine")
    out = {}
    out["passive_other"] = attempt(lambda: count(b.channel(), "excl"))
    out["declare_other"] = attempt(lambda: b.channel().queue_declare("excl", exclusive=True).method.queue)
    out["consume_other"] = attempt(lambda: b.channel().basic_consume("excl", lambda *_a: None) and None)
    out["get_other"] = attempt(lambda: b.channel().basic_get("excl")[0] is None)
    out["delete_other"] = attempt(lambda: b.channel().queue_delete("excl").method.message_count)
    out["owner_still"] = count(ca, "excl")
    a.close()
    out["after_owner_closed"] = attempt(lambda: count(b.channel(), "excl"))
    # Server-named, exclusive: the usual temporary reply queue.
    r = b.channel().queue_declare("", exclusive=True).method
    out["server_named"] = [r.queue.split("-")[0], r.message_count, r.consumer_count]
    return out


def auto_delete(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    out = {}
    ch.queue_declare("ad-never", auto_delete=True)
    out["never_consumed"] = attempt(lambda: count(conn.channel(), "ad-never"))
    ch.queue_declare("ad-cancel", auto_delete=True)
    t1 = ch.basic_consume("ad-cancel", lambda *_a: None)
    t2 = ch.basic_consume("ad-cancel", lambda *_a: None)
    ch.basic_cancel(t1)
    out["one_of_two_cancelled"] = attempt(lambda: count(conn.channel(), "ad-cancel"))
    ch.basic_cancel(t2)
    out["last_cancelled"] = attempt(lambda: count(conn.channel(), "ad-cancel"))
    c2 = conn.channel()
    c2.queue_declare("ad-close", auto_delete=True)
    c2.basic_consume("ad-close", lambda *_a: None)
    c2.close()
    out["channel_closed"] = attempt(lambda: count(conn.channel(), "ad-close"))
    other = ctx.amqp()
    oc = other.channel()
    oc.queue_declare("ad-conn", auto_delete=True)
    oc.basic_consume("ad-conn", lambda *_a: None)
    other.close()
    out["connection_closed"] = attempt(lambda: count(conn.channel(), "ad-conn"))
    out["inequivalent"] = attempt(lambda: conn.channel().queue_declare("ad-never", auto_delete=False).method.queue)
    conn.channel().queue_delete("ad-never")
    return out


def default_exchange(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("dx", exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", "dx", b"direct", pika.BasicProperties(delivery_mode=2, headers={"h": 1}))
    m = delivery(*get_one(ch, "dx", no_ack=True))
    ch.basic_publish("", "nobody-home", b"lost")
    alive = ch.is_open and count(ch, "dx")
    # Expiration: kept while it runs (midge gives what is left of it, RabbitMQ the original
    # text), and an expired message is not delivered.
    ch.basic_publish("", "dx", b"ttl", pika.BasicProperties(expiration="60000"))
    _m, p, _b = get_one(ch, "dx", no_ack=True)
    ttl_kept = p.expiration is not None and 55000 <= int(p.expiration) <= 60000
    ch.basic_publish("", "dx", b"gone", pika.BasicProperties(expiration="1"))
    ch.basic_publish("", "dx", b"after")
    time.sleep(0.05)
    after_expired = get_one(ch, "dx", no_ack=True)[2].decode()
    return {
        "delivery": m,
        "expiration_kept": ttl_kept,
        "expired_skipped": after_expired,
        "unroutable_channel_alive": alive,
        "bind": attempt(lambda: conn.channel().queue_bind("dx", "", "dx") and None),
        "passive": attempt(lambda: conn.channel().exchange_declare("", passive=True) and None),
    }


def passive_and_404(ctx):
    conn = ctx.amqp()
    out = {}
    out["amq.topic"] = attempt(lambda: conn.channel().exchange_declare("amq.topic", passive=True) and None)
    out["amq.topic_as_topic"] = attempt(lambda: conn.channel().exchange_declare("amq.topic", "topic", durable=True) and None)
    out["amq.topic_as_direct"] = attempt(lambda: conn.channel().exchange_declare("amq.topic", "direct", durable=True) and None)
    out["missing_exchange"] = attempt(lambda: conn.channel().exchange_declare("no-such-x", passive=True) and None)
    out["missing_queue"] = attempt(lambda: count(conn.channel(), "no-such-q"))
    out["bind_missing_queue"] = attempt(lambda: conn.channel().queue_bind("no-such-q", "amq.topic", "k") and None)
    ch = conn.channel()
    ch.queue_declare("p404", exclusive=True)
    out["bind_missing_exchange"] = attempt(lambda: conn.channel().queue_bind("p404", "no-such-x", "k") and None)
    out["consume_missing_queue"] = attempt(lambda: conn.channel().basic_consume("no-such-q", lambda *_a: None) and None)
    out["reserved_name"] = attempt(lambda: conn.channel().queue_declare("amq.mine").method.queue)
    # A channel error leaves the other channels open.
    out["other_channel_open"] = [ch.is_open, count(ch, "p404")]
    return out


def bind_unbind(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("ub", exclusive=True)
    ch.queue_bind("ub", "amq.topic", "ub.one")
    ch.queue_bind("ub", "amq.topic", "ub.one")
    ch.queue_bind("ub", "amq.topic", "ub.two")
    ch.queue_bind("ub", "amq.topic", "fence")
    pub = ctx.mqtt("diff-ub-pub")
    pub.publish("ub/one", b"1")
    pub.publish("ub/two", b"2")
    pub.publish("fence", b"fence")
    first = [d["body"] for d in drain_until_fence(ch, "ub")]
    ch.queue_unbind("ub", "amq.topic", "ub.one")
    ch.queue_unbind("ub", "amq.topic", "ub.never-bound")
    pub.publish("ub/one", b"1")
    pub.publish("ub/two", b"2")
    pub.publish("fence", b"fence")
    second = [d["body"] for d in drain_until_fence(ch, "ub")]
    return {"bound_twice_once_delivered": first, "after_unbind": second}


def retained_not_replayed(ctx):
    pub = ctx.mqtt("diff-ret-pub")
    pub.publish("keep/x", b"kept", retain=True)
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("ret", exclusive=True)
    ch.queue_bind("ret", "amq.topic", "keep.#")
    ch.queue_bind("ret", "amq.topic", "fence")
    pub.publish("fence", b"fence")
    got = [d["body"] for d in drain_until_fence(ch, "ret")]
    pub.publish("keep/x", b"", retain=True)
    # An AMQP publish is not retained for later MQTT subscribers.
    ch.basic_publish("amq.topic", "keep.amqp", b"not-kept")
    sub = ctx.mqtt("diff-ret-sub")
    sub.subscribe("keep/#")
    sub.subscribe("fence")
    ch.basic_publish("amq.topic", "fence", b"fence")
    return {"queue": got, "mqtt": [mqtt_msg(m) for m in sub.until_fence()]}


def consume_cancel(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("cc", exclusive=True)
    ch.confirm_delivery()
    seen = []
    tag = ch.basic_consume("cc", lambda c, m, p, b: seen.append([m.consumer_tag, b.decode()]), auto_ack=True, consumer_tag="cc-tag")
    ch.basic_publish("", "cc", b"one")
    consume_until(conn, seen, 1, quiet=0)
    ch.basic_cancel(tag)
    ch.basic_publish("", "cc", b"two")
    after = count(ch, "cc")
    # A consumer tag is the channel's: another channel may use the same one.
    conn.channel().basic_consume("cc", lambda *_a: None, consumer_tag="same")
    other = conn.channel()
    reuse = attempt(lambda: other.basic_consume("cc", lambda *_a: None, consumer_tag="same"))
    return {"seen": seen, "after_cancel": after, "same_tag_other_channel": reuse, "consumers": count(ch, "cc")}


def queue_arguments(ctx):
    """x-max-length (drop-head, reject-publish), x-max-length-bytes, x-message-ttl,
    x-expires, and what is refused: bad values, inequivalent redeclarations."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.confirm_delivery()
    out = {}
    ch.queue_declare("qa-len", exclusive=True, arguments={"x-max-length": 2})
    for i in range(4):
        ch.basic_publish("", "qa-len", f"l{i}".encode())
    out["max_length"] = [count(ch, "qa-len"), [get_one(ch, "qa-len", no_ack=True)[2].decode() for _ in range(2)]]
    ch.queue_declare("qa-reject", exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})

    def pub(body):
        try:
            ch.basic_publish("", "qa-reject", body)
            return "confirmed"
        except pika.exceptions.NackError:
            return "nacked"

    out["reject_publish"] = [pub(b"first"), pub(b"second"), count(ch, "qa-reject")]
    ch.queue_declare("qa-bytes", exclusive=True, arguments={"x-max-length-bytes": 10})
    for body in [b"12345", b"67890", b"abcde"]:
        ch.basic_publish("", "qa-bytes", body)
    out["max_length_bytes"] = [count(ch, "qa-bytes"), get_one(ch, "qa-bytes", no_ack=True)[2].decode()]
    ch.queue_declare("qa-ttl", exclusive=True, arguments={"x-message-ttl": 100})
    ch.basic_publish("", "qa-ttl", b"short-lived")
    time.sleep(0.4)
    ch.basic_publish("", "qa-ttl", b"fresh")
    out["message_ttl"] = [get_one(ch, "qa-ttl", no_ack=True)[2].decode(), count(ch, "qa-ttl")]
    # Unused for 200 ms: deleted (midge looks every 250 ms).
    ch.queue_declare("qa-expires", arguments={"x-expires": 200})
    time.sleep(0.8)
    out["expires"] = attempt(lambda: count(conn.channel(), "qa-expires"))

    def declare(name, **kw):
        return attempt(lambda: conn.channel().queue_declare(name, **kw).method.queue)

    out["bad_ttl"] = declare("qa-bad", arguments={"x-message-ttl": -1})
    out["bad_length_type"] = declare("qa-bad", arguments={"x-max-length": "ten"})
    out["bad_overflow"] = declare("qa-bad", arguments={"x-overflow": "sideways"})
    out["inequivalent_arg"] = declare("qa-len", exclusive=True, arguments={"x-max-length": 3})
    out["inequivalent_flag"] = declare("qa-len", exclusive=True, auto_delete=True, arguments={"x-max-length": 2})
    out["not_x_ignored"] = declare("qa-plain", exclusive=True, arguments={"plain": 1})
    # Not honoured by midge (refused rather than ignored): README lists them.
    out["max_priority"] = declare("qa-prio", exclusive=True, arguments={"x-max-priority": 10})
    out["dead_letter"] = declare("qa-dlx", exclusive=True, arguments={"x-dead-letter-exchange": "amq.topic"})
    return out


def exchanges(ctx):
    """exchange.declare of other exchanges and types (RabbitMQ has them, midge refuses them
    with 540), exchange.delete of amq.topic; the connection's other channels go on."""
    conn = ctx.amqp()
    keep = conn.channel()
    keep.queue_declare("xq", exclusive=True)
    out = {}
    for kind in ["direct", "fanout", "topic", "headers"]:
        out[kind] = attempt(lambda: conn.channel().exchange_declare(f"diff-x-{kind}", kind) and None)
    out["amq.direct_passive"] = attempt(lambda: conn.channel().exchange_declare("amq.direct", passive=True) and None)
    out["delete_amq.topic"] = attempt(lambda: conn.channel().exchange_delete("amq.topic") and None)
    out["other_channel_open"] = [keep.is_open, count(keep, "xq")]
    for kind in ["direct", "fanout", "topic", "headers"]:
        try:
            conn.channel().exchange_delete(f"diff-x-{kind}")
        except Exception:
            pass
    return out


def durable_before(ctx):
    """Before a restart of the broker (durable_after runs after it): durable, transient,
    exclusive queues; persistent and transient messages; one delivered, not acknowledged."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("dur", durable=True)
    ch.queue_bind("dur", "amq.topic", "dur.#")
    ch.queue_declare("dur-args", durable=True, arguments={"x-max-length": 5})
    ch.queue_declare("dur-not", durable=False)
    ch.queue_declare("dur-excl", durable=True, exclusive=True)
    ch.basic_publish("", "dur", b"p1", pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "dur", b"t1", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", "dur", b"p2", pika.BasicProperties(delivery_mode=2, content_type="text/plain", headers={"h": "v"}))
    ch.basic_publish("", "dur-not", b"n1", pika.BasicProperties(delivery_mode=2))
    pub = ctx.mqtt("diff-dur-pub")
    pub.publish("dur/q1", b"m1", qos=1)
    pub.publish("dur/q0", b"m0", qos=0)
    deadline = time.monotonic() + WAIT
    while count(ch, "dur")[0] < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    # Delivered and not acknowledged when the connection closes: back, redelivered.
    m, _p, b = get_one(ch, "dur")
    return {"count": count(ch, "dur"), "unacked": [b.decode(), m.redelivered]}


def durable_after(ctx):
    conn = ctx.amqp()
    ch = conn.channel()
    out = {"count": count(ch, "dur")}
    got = []
    for _ in range(out["count"][0]):
        m, p, b = get_one(ch, "dur")
        ch.basic_ack(m.delivery_tag)
        got.append(delivery(m, p, b))
    out["messages"] = got
    pub = ctx.mqtt("diff-dur-pub2")
    pub.publish("dur/after", b"after", qos=1)
    m, _p, b = get_one(ch, "dur")
    ch.basic_ack(m.delivery_tag)
    out["binding_kept"] = [m.routing_key, b.decode()]
    out["not_durable"] = attempt(lambda: count(conn.channel(), "dur-not"))
    out["exclusive"] = attempt(lambda: count(conn.channel(), "dur-excl"))
    out["args_kept"] = attempt(lambda: conn.channel().queue_declare("dur-args", durable=True, arguments={"x-max-length": 6}).method.queue)
    out["flags_kept"] = attempt(lambda: conn.channel().queue_declare("dur", durable=False).method.queue)
    c = conn.channel()
    out["deleted"] = [c.queue_delete("dur").method.message_count, c.queue_delete("dur-args").method.message_count]
    return out


def login(ctx):
    """Connection negotiation: guest from loopback, another vhost, a wrong password."""

    def connect(vhost="/", password="guest"):
        params = pika.ConnectionParameters(
            host=ctx.host,
            port=ctx.amqp_port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials("guest", password),
            connection_attempts=1,
        )
        try:
            conn = pika.BlockingConnection(params)
        except pika.exceptions.AMQPConnectionError as e:
            # pika wraps the broker's connection.close: "...: (530) 'NOT_ALLOWED - ...'".
            m = re.search(r"\((\d+)\) ['\"](\w+)", str(e))
            return {"refused": int(m.group(1)), "name": m.group(2)} if m else {"refused": type(e).__name__}
        conn.close()
        return {"ok": None}

    return {"guest": connect(), "other_vhost": connect(vhost="other"), "wrong_password": connect(password="nope")}


def unsupported(ctx):
    """What midge refuses with 540 on that channel (README's list), beside RabbitMQ."""
    conn = ctx.amqp()
    ch = conn.channel()
    ch.queue_declare("uns", exclusive=True)
    out = {
        "tx_select": attempt(lambda: conn.channel().tx_select() and None),
        "qos_global": attempt(lambda: conn.channel().basic_qos(prefetch_count=5, global_qos=True) and None),
        "exclusive_consumer": attempt(lambda: conn.channel().basic_consume("uns", lambda *_a: None, exclusive=True) and None),
        "other_channel_open": [ch.is_open, count(ch, "uns")[0]],
    }
    # Last: RabbitMQ closes the whole connection for it.
    out["flow_off"] = attempt(lambda: conn.channel().flow(False) and None)
    return out


SCENARIOS = [
    mapping_mqtt_to_amqp,
    mapping_amqp_to_mqtt,
    payloads,
    qos_mqtt_to_amqp,
    qos_amqp_to_mqtt,
    properties_amqp_to_amqp,
    properties_amqp_to_mqtt,
    redelivery,
    confirms,
    basic_get,
    ack_multiple,
    nack_reject,
    prefetch,
    round_robin,
    mandatory_return,
    purge_delete,
    exclusive,
    auto_delete,
    default_exchange,
    passive_and_404,
    bind_unbind,
    retained_not_replayed,
    consume_cancel,
    queue_arguments,
    exchanges,
    login,
    unsupported,
    durable_before,
]

# Run by --after-restart, once the broker restarted after SCENARIOS.
AFTER_RESTART = [durable_after]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--amqp-port", type=int, required=True)
    p.add_argument("--only", help="comma-separated scenario names")
    p.add_argument("--after-restart", action="store_true", help="the scenarios that follow a restart")
    a = p.parse_args()
    only = set(a.only.split(",")) if a.only else None
    result = {}
    for scenario in AFTER_RESTART if a.after_restart else SCENARIOS:
        name = scenario.__name__
        if only and name not in only:
            continue
        ctx = Ctx(a.host, a.mqtt_port, a.amqp_port)
        try:
            result[name] = scenario(ctx)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            result[name] = {"exception": f"{type(e).__name__}: {e}"}
        finally:
            ctx.close()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
