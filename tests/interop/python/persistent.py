"""Persistent session: a subscriber (3.1.1 clean session 0, or v5 with a session expiry)
disconnects; QoS 1 messages published meanwhile are queued and delivered in order when it
returns with session present, without subscribing again; a QoS 0 message is not queued."""

from common import Client, emit, parser, settle, watcher

args = parser(__doc__).parse_args()
client_id = f"paho-persistent-{args.protocol}"
v5 = args.protocol == "5"
# v3: clean session 0 on both connections. v5: clean start on the first, then resume.
sub = Client(args, client_id, clean=v5, session_expiry=300 if v5 else None)
first = sub.connect()
sub.subscribe("interop/persistent/#", 1)
settle(sub)
# Cluster mode: shows when the session's node has queued what is published elsewhere.
watch = watcher(sub, "interop/persistent/#")
sub.disconnect()

pub = Client(args, f"paho-persistent-pub-{args.protocol}")
pub.connect()
pub.publish("interop/persistent/t", b"one", qos=1)
# Queued by mistake, this would arrive between "one" and "two".
pub.publish("interop/persistent/t", b"qos0 while offline", qos=0)
pub.publish("interop/persistent/t", b"two", qos=1)
pub.publish("interop/persistent/t", b"three", qos=1)
pub.disconnect()
if watch is not None:
    watch.expect(4)
    watch.disconnect()

# Cluster mode: on another node than the first time, so the session moves between nodes.
back = Client(args, client_id, clean=False, session_expiry=300 if v5 else None)
second = back.connect()
received = back.expect(3)
back.disconnect()
emit({"first": first, "second": second, "received": received})
