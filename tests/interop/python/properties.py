"""MQTT 5 only. A PUBLISH's properties reach the subscriber unchanged (user properties in
order with repeats, response topic, correlation data, content type, payload format);
overlapping subscriptions give one copy carrying both subscription identifiers; a topic
alias set by the publisher resolves; a retained message's expiry is forwarded as the
remaining interval."""

import time

from common import Client, emit, parser, publish_properties, settle, wait_retained

args = parser(__doc__).parse_args()
if args.protocol != "5":
    raise SystemExit("properties.py is MQTT 5 only")

sub = Client(args, "paho-properties-sub")
sub.connect()
sub.subscribe("interop/props/#", 1, subscription_id=7)
sub.subscribe("interop/props/+/x", 0, subscription_id=9)
settle(sub)

pub = Client(args, "paho-properties-pub")
pub.connect()
pub.publish("interop/props/a/x", b'{"x": 1}', qos=1, properties=publish_properties(
    UserProperty=[("k", "v1"), ("k", "v2"), ("unicode", "\u00fc\u2713")],
    ResponseTopic="interop/reply",
    CorrelationData=b"\x00\x01corr\xff",
    ContentType="application/json",
    PayloadFormatIndicator=1,
    MessageExpiryInterval=120,
))
# Topic alias 3 is set with the topic, then used alone (empty topic name).
pub.publish("interop/props/alias/x", b"alias set", qos=1,
            properties=publish_properties(TopicAlias=3))
pub.publish("", b"alias used", qos=1, properties=publish_properties(TopicAlias=3))
routed = sub.expect(3)

pub.publish("interop/props/expiring", b"ten seconds", qos=1, retain=True,
            properties=publish_properties(MessageExpiryInterval=10))
# Time has to pass in the broker for the remaining interval to count down.
time.sleep(1.1)
late = Client(args, "paho-properties-late")
wait_retained(pub, late.port)
late.connect()
late.subscribe("interop/props/expiring", 1)
expiring = late.expect(1)

pub.disconnect()
sub.disconnect()
late.disconnect()
emit({"routed": routed, "expiring": expiring})
