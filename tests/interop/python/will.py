"""Wills: a client whose connection is reset without DISCONNECT has its will published
(with its v5 will properties); a client that sends a normal DISCONNECT does not."""

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common import Client, emit, parser, settle

args = parser(__doc__).parse_args()
sub = Client(args, f"paho-will-sub-{args.protocol}")
sub.connect()
sub.subscribe("interop/will/#", 1)
settle(sub)

polite = Client(args, f"paho-will-polite-{args.protocol}",
                will={"topic": "interop/will/polite", "payload": b"must not be sent", "qos": 1})
polite.connect()
polite.disconnect()

will = {"topic": "interop/will/doomed", "payload": b"doomed is gone", "qos": 1}
if args.protocol == "5":
    props = Properties(PacketTypes.WILLMESSAGE)
    props.UserProperty = [("reason", "reset")]
    props.ContentType = "text/plain"
    will["properties"] = props
doomed = Client(args, f"paho-will-doomed-{args.protocol}", will=will, threaded=False)
doomed.connect()
doomed.abort()

received = sub.expect(1)
# A will wrongly published for the polite client would have been routed before the
# doomed client even connected; the short wait only covers delivery of such a message.
received += sub.drain(0.2)
sub.disconnect()
emit({"received": received})
