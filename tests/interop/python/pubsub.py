"""Publish/subscribe at QoS 0, 1 and 2 between two paho clients: payloads of several sizes
(empty, small, and one larger than a single TCP read) must arrive intact, in order, at the
QoS of the subscription; a QoS 2 message to a QoS 1 subscription arrives at QoS 1."""

from common import Client, emit, parser, pattern, settle

SIZES = [0, 1, 300, 70000, 5]

args = parser(__doc__).parse_args()
sub = Client(args, f"paho-pubsub-sub-{args.protocol}")
sub.connect()
granted = [sub.subscribe(f"interop/pubsub/q{qos}", qos)[0] for qos in (0, 1, 2)]
granted += sub.subscribe("interop/pubsub/down", 1)
settle(sub)

pub = Client(args, f"paho-pubsub-pub-{args.protocol}")
pub.connect()
for qos in (0, 1, 2):
    for i, size in enumerate(SIZES):
        pub.publish(f"interop/pubsub/q{qos}", pattern(qos * 10 + i, size), qos=qos)
pub.publish("interop/pubsub/down", b"downgraded", qos=2)

received = sub.expect(3 * len(SIZES) + 1)
pub.disconnect()
sub.disconnect()
emit({"granted": granted, "sizes": SIZES, "received": received})
