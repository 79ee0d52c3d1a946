"""Retained messages: a new subscriber gets the retained messages (retain flag set, QoS of
the stored message), not the one deleted by an empty retained payload; a message published
while it is subscribed arrives without the retain flag."""

from common import Client, emit, parser, settle, wait_retained

args = parser(__doc__).parse_args()
pub = Client(args, f"paho-retained-pub-{args.protocol}")
pub.connect()
pub.publish("interop/retained/a", b"A", qos=1, retain=True)
pub.publish("interop/retained/b", b"B", qos=0, retain=True)
pub.publish("interop/retained/gone", b"soon deleted", qos=1, retain=True)
pub.publish("interop/retained/gone", b"", qos=1, retain=True)

sub = Client(args, f"paho-retained-sub-{args.protocol}")
wait_retained(pub, sub.port)
sub.connect()
sub.subscribe("interop/retained/#", 1)
# The two stored messages come right after SUBACK; a deleted one would come before the
# live message below, so taking three messages shows it did not come.
at_subscribe = sub.expect(2)
settle(sub)
pub.publish("interop/retained/a", b"live", qos=1, retain=True)
live = sub.expect(1)
pub.disconnect()
sub.disconnect()
emit({"at_subscribe": at_subscribe, "live": live})
