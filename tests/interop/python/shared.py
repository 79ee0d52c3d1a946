"""A shared subscription $share/{group}/{filter} held by two paho clients: each message
goes to exactly one of them, and both get some. Reports the message numbers each got."""

import time

from common import WAIT, Client, emit, parser, settle

args = parser(__doc__).parse_args()
# In a cluster NATS picks the node at random for each message: with 40, both members get
# some but with a chance of 2^-39.
COUNT = 10 if args.ports is None else 40
members = [Client(args, f"paho-shared-{name}-{args.protocol}") for name in ("a", "b")]
for member in members:
    member.connect()
    member.subscribe("$share/interop/interop/shared/#", 1)
    settle(member, shared=True)

pub = Client(args, f"paho-shared-pub-{args.protocol}")
pub.connect()
for i in range(COUNT):
    pub.publish("interop/shared/t", str(i).encode(), qos=1)

received = {"a": [], "b": []}
deadline = time.monotonic() + WAIT
while sum(len(v) for v in received.values()) < COUNT:
    if time.monotonic() > deadline:
        raise TimeoutError(f"shared subscribers got only {received}")
    for name, member in zip(("a", "b"), members):
        received[name] += [int(bytes.fromhex(m["payload"])) for m in member.drain(0.01)]
# A copy delivered twice would follow at once; the short wait gives it the time to show.
for name, member in zip(("a", "b"), members):
    received[name] += [int(bytes.fromhex(m["payload"])) for m in member.drain(0.1)]
pub.disconnect()
for member in members:
    member.disconnect()
emit({"count": COUNT, "received": received})
