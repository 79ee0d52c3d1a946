"""Shared by the paho-mqtt scenario scripts.

Each script drives a broker with paho-mqtt clients, then prints one JSON line on stdout
describing what the clients observed; the Rust test that ran it asserts on that line. A
script never decides pass or fail itself, except that a wait that times out raises (exit
status 1, traceback on stderr), which the Rust side reports.
"""

import argparse
import itertools
import json
import queue
import socket
import struct
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# Every wait in a script is bounded by this many seconds.
WAIT = 5.0

# Topics of the cluster-mode probes; no scenario's filter matches them.
PROBE = "interop-probe"


class _Parser(argparse.ArgumentParser):
    def parse_args(self, *a, **kw):
        args = super().parse_args(*a, **kw)
        if (args.port is None) == (args.ports is None):
            self.error("give either --port (one broker) or --ports (the nodes of a cluster)")
        return args


def _ports(text):
    return [int(p) for p in text.split(",")]


def parser(description):
    p = _Parser(description=description)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int)
    p.add_argument("--ports", type=_ports,
                   help="a cluster's nodes, comma separated: clients connect to them in turn")
    p.add_argument("--protocol", choices=["311", "5"], required=True)
    return p


# How many clients took a node so far (cluster mode).
_placed = itertools.count()


def next_port(args):
    """The port the next client connects to: the broker's, or the next node's in turn."""
    if args.ports is None:
        return args.port
    return args.ports[next(_placed) % len(args.ports)]


def emit(result):
    """Prints the result line the Rust test parses."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def pattern(seed, size):
    """A deterministic payload the Rust side can rebuild: byte j is (seed * 31 + j) % 256."""
    return bytes((seed * 31 + j) % 256 for j in range(size))


def publish_properties(**fields):
    """v5 PUBLISH properties from keyword arguments named like paho's attributes."""
    props = Properties(PacketTypes.PUBLISH)
    for name, value in fields.items():
        setattr(props, name, value)
    return props


def properties_json(props):
    """The v5 properties of a received PUBLISH, in the shape the Rust tests expect."""
    if props is None:
        return {}
    out = {}
    if hasattr(props, "UserProperty"):
        out["user_properties"] = [list(kv) for kv in props.UserProperty]
    if hasattr(props, "ResponseTopic"):
        out["response_topic"] = props.ResponseTopic
    if hasattr(props, "CorrelationData"):
        out["correlation_data"] = props.CorrelationData.hex()
    if hasattr(props, "ContentType"):
        out["content_type"] = props.ContentType
    if hasattr(props, "PayloadFormatIndicator"):
        out["payload_format_indicator"] = props.PayloadFormatIndicator
    if hasattr(props, "MessageExpiryInterval"):
        out["message_expiry_interval"] = props.MessageExpiryInterval
    if hasattr(props, "SubscriptionIdentifier"):
        ids = props.SubscriptionIdentifier
        out["subscription_identifiers"] = sorted(ids if isinstance(ids, list) else [ids])
    if hasattr(props, "TopicAlias"):
        out["topic_alias"] = props.TopicAlias
    return out


class Client:
    """A paho client run by paho's network thread, with blocking, bounded helpers."""

    def __init__(self, args, client_id, clean=True, session_expiry=None, will=None,
                 threaded=True, port=None):
        self.v5 = args.protocol == "5"
        self.args = args
        self.client_id = client_id
        # A given port (a probe's) does not take a turn among the nodes.
        self.port = next_port(args) if port is None else port
        self.clean = clean
        self.session_expiry = session_expiry
        self.threaded = threaded
        kwargs = {"client_id": client_id, "protocol": mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        if will is not None:
            self.paho.will_set(**will)
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connect_result = None
        self.disconnect_reason = None
        self.acks = {}
        self.ack_lock = threading.Condition()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_ack
        self.paho.on_unsubscribe = self._on_ack
        self.paho.on_publish = self._on_publish

    # ---- callbacks (paho's thread) ----

    def _on_connect(self, _client, _userdata, flags, reason_code, _properties):
        self.connect_result = {
            "session_present": bool(flags.session_present),
            "reason_code": reason_code.value,
        }
        self.connected.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties):
        self.disconnect_reason = reason_code.value
        self.disconnected.set()

    def _on_message(self, _client, _userdata, message):
        self.messages.put({
            "topic": message.topic,
            "qos": message.qos,
            "retain": bool(message.retain),
            "payload": message.payload.hex(),
            "properties": properties_json(message.properties) if self.v5 else {},
        })

    def _on_ack(self, _client, _userdata, mid, reason_codes, _properties):
        with self.ack_lock:
            self.acks[mid] = [rc.value for rc in reason_codes]
            self.ack_lock.notify_all()

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties):
        with self.ack_lock:
            self.acks[mid] = [reason_code.value]
            self.ack_lock.notify_all()

    # ---- blocking helpers ----

    def connect(self):
        kwargs = {"keepalive": 60}
        if self.v5:
            kwargs["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                kwargs["properties"] = props
        self.connected.clear()
        self.disconnected.clear()
        self.paho.connect(self.args.host, self.port, **kwargs)
        if self.threaded:
            self.paho.loop_start()
        self._wait(self.connected.is_set, "CONNACK")
        if self.connect_result["reason_code"] != 0:
            raise RuntimeError(f"connection refused: {self.connect_result}")
        return self.connect_result

    def _wait(self, done, what):
        deadline = time.monotonic() + WAIT
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {WAIT}s")
            if self.threaded:
                time.sleep(0.005)
            else:
                self.paho.loop(timeout=0.05)

    def _wait_ack(self, mid, what):
        deadline = time.monotonic() + WAIT
        with self.ack_lock:
            while mid not in self.acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} for message id {mid} within {WAIT}s")
                self.ack_lock.wait(left)
            return self.acks.pop(mid)

    def subscribe(self, topic, qos, subscription_id=None):
        """Subscribes and waits for SUBACK; returns the granted QoS / reason codes."""
        kwargs = {}
        if subscription_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = subscription_id
            kwargs["properties"] = props
        result, mid = self.paho.subscribe(topic, qos, **kwargs)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"subscribe failed: {result}")
        return self._wait_ack(mid, "SUBACK")

    def unsubscribe(self, topic):
        """Unsubscribes and waits for UNSUBACK."""
        result, mid = self.paho.unsubscribe(topic)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"unsubscribe failed: {result}")
        return self._wait_ack(mid, "UNSUBACK")

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and waits until it is acknowledged (QoS 1/2) or written (QoS 0)."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {info.rc}")
        return self._wait_ack(info.mid, "acknowledgement")

    def expect(self, count):
        """Waits for `count` messages, each within WAIT seconds."""
        out = []
        for _ in range(count):
            try:
                out.append(self.messages.get(timeout=WAIT))
            except queue.Empty:
                raise TimeoutError(f"received {len(out)} of {count} messages: {out}")
        return out

    def drain(self, quiet):
        """Whatever else arrives within `quiet` seconds (for checks that nothing more came)."""
        out = []
        deadline = time.monotonic() + quiet
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                return out

    def disconnect(self):
        """A normal DISCONNECT; waits until the connection is closed."""
        self.paho.disconnect()
        self._wait(self.disconnected.is_set, "close after DISCONNECT")
        if self.threaded:
            self.paho.loop_stop()

    def abort(self):
        """Drops the connection without DISCONNECT: the socket is reset (SO_LINGER 0)."""
        if self.threaded:
            raise RuntimeError("abort needs a client created with threaded=False")
        sock = self.paho.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


# ---- cluster mode: waiting until what one node did has spread to the others ----

def _arrives(client, token, within):
    """True when a message with payload `token` reaches `client` within `within` s."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            if client.messages.get(timeout=left)["payload"] == token.hex():
                return True
        except queue.Empty:
            return False


def settle(client, shared=False):
    """Cluster mode: returns once every other node routes to the subscriptions `client`
    made so far (`shared`: they are shared subscriptions, whose interest travels on a
    connection of its own). SUBACK comes before the other nodes know of a subscription.
    A node hands its subscriptions' interest to NATS in the order they were made, and NATS
    passes it on in order, so a probe subscription made on the same node afterwards, that
    a message from each other node reaches, shows the earlier ones are known there."""
    args = client.args
    if args.ports is None:
        return
    topic = f"{PROBE}/{client.client_id}"
    listener = Client(args, f"{PROBE}-{client.client_id}", port=client.port)
    listener.connect()
    listener.subscribe(f"$share/{PROBE}/{topic}" if shared else topic, 0)
    for port in args.ports:
        if port == client.port:
            continue
        prober = Client(args, f"{PROBE}-{client.client_id}-{port}", port=port)
        prober.connect()
        token = str(port).encode()
        deadline = time.monotonic() + WAIT
        while True:
            prober.publish(topic, token, qos=0)
            if _arrives(listener, token, 0.05):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{client.client_id}'s subscriptions not known on node "
                                   f"{port} within {WAIT}s")
        prober.disconnect()
    listener.disconnect()


def wait_retained(publisher, port):
    """Cluster mode: returns once the retained messages `publisher` published so far are
    visible on the node at `port`. A node writes its retained changes to the bucket one at
    a time, in order, and every node applies the bucket in order, so a marker retained
    last, seen there, shows the earlier changes are."""
    args = publisher.args
    if args.ports is None:
        return
    topic = f"{PROBE}/retained/{publisher.client_id}"
    token = str(time.time_ns()).encode()
    publisher.publish(topic, token, qos=1, retain=True)
    reader = Client(args, f"{PROBE}-{publisher.client_id}-reader", port=port)
    reader.connect()
    deadline = time.monotonic() + WAIT
    while True:
        # A retained message in the node's mirror comes right after SUBACK.
        reader.subscribe(topic, 0)
        seen = _arrives(reader, token, 0.05)
        reader.unsubscribe(topic)
        if seen:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"retained marker not visible on node {port} within {WAIT}s")
    reader.disconnect()


def watcher(client, topic_filter):
    """Cluster mode: a client on `client`'s node subscribed to `topic_filter` at QoS 1. The
    node routes a message to all its matching subscriptions at once, so what the watcher
    got, `client`'s (possibly offline) session got too. None on a single broker."""
    if client.args.ports is None:
        return None
    watch = Client(client.args, f"{PROBE}-{client.client_id}-watcher", port=client.port)
    watch.connect()
    watch.subscribe(topic_filter, 1)
    return watch
