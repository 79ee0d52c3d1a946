"""MQTT 5 enhanced authentication with SCRAM, driven by Python scramp over a raw socket.

The SCRAM messages are scramp's (an independent implementation); this script only carries
them in CONNECT, AUTH and CONNACK (MQTT 5, 3.15 and 4.12), and prints what it saw as one
JSON line.

  scram_client.py --port P login --method M --user U --password PW [--bad-proof]
      [--connect-user NAME] [--channel-binding] [--reauth PW2 ...] [--reauth-method M2]
  scram_client.py --port P timing --method M --user U --password PW --count N
  scram_client.py --port P v3-auth | auth-without-method | auth-first
"""

import argparse
import base64
import json
import socket
import struct
import sys
import time

from scramp import ScramClient, ScramException

WAIT = 5.0

CONNACK, PINGRESP, DISCONNECT, AUTH = 2, 13, 14, 15

# Property id -> kind, for the properties a broker may send (MQTT 5, 2.2.2.2).
PROPERTIES = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte",
    0x19: "byte", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16", 0x22: "u16",
    0x23: "u16", 0x24: "byte", 0x25: "byte", 0x26: "pair", 0x27: "u32", 0x28: "byte",
    0x29: "byte", 0x2A: "byte",
}


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def properties(method=None, data=None):
    body = b""
    if method is not None:
        body += b"\x15" + string(method)
    if data is not None:
        body += b"\x16" + string(data)
    return varint(len(body)) + body


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect(method=None, data=None, user=None, client_id="scram"):
    flags = 0x02 | (0x80 if user is not None else 0)
    body = string("MQTT") + bytes([5, flags]) + struct.pack(">H", 60)
    body += properties(method, data) + string(client_id)
    if user is not None:
        body += string(user)
    return packet(0x10, body)


def auth(reason, method, data):
    return packet(0xF0, bytes([reason]) + properties(method, data))


class Conn:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=WAIT)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def recv(self):
        """The next packet as (type, reason, properties), None once the broker closed, or
        "timeout"."""
        try:
            self._need(2)
            length, shift, i = 0, 0, 1
            while True:
                self._need(i + 1)
                byte = self.buf[i]
                length += (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            self._need(i + length)
        except socket.timeout:
            return "timeout"
        except (EOFError, ConnectionResetError):
            return None
        kind = self.buf[0] >> 4
        body = self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        if kind == CONNACK:  # v3.1.1's has no properties
            return kind, body[1], parse_properties(body[2:]) if len(body) > 2 else {}
        if kind in (AUTH, DISCONNECT):
            if not body:
                return kind, 0, {}
            return kind, body[0], parse_properties(body[1:]) if len(body) > 1 else {}
        return kind, None, {}

    def recv_within(self, seconds):
        self.sock.settimeout(seconds)
        try:
            return self.recv()
        finally:
            self.sock.settimeout(WAIT)

    def closed(self):
        """True when the broker closes without sending anything more."""
        return self.recv() is None


def parse_properties(data):
    length, shift, i = 0, 0, 0
    while True:
        byte = data[i]
        length += (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            break
    end, props = i + length, {}
    while i < end:
        pid = data[i]
        i += 1
        kind = PROPERTIES[pid]
        if kind == "byte":
            value, i = data[i], i + 1
        elif kind == "u16":
            value, i = struct.unpack(">H", data[i:i + 2])[0], i + 2
        elif kind == "u32":
            value, i = struct.unpack(">I", data[i:i + 4])[0], i + 4
        elif kind == "varint":
            value = 0
            shift = 0
            while True:
                byte = data[i]
                i += 1
                value += (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
        else:
            n = struct.unpack(">H", data[i:i + 2])[0]
            value, i = data[i + 2:i + 2 + n], i + 2 + n
            if kind == "pair":
                m = struct.unpack(">H", data[i:i + 2])[0]
                value, i = [value.decode(), data[i + 2:i + 2 + m].decode()], i + 2 + m
            elif kind == "str":
                value = value.decode()
        props[pid] = value
    return props


def describe(got):
    if got is None:
        return {"closed": True}
    if got == "timeout":
        return {"timeout": True}
    kind, reason, props = got
    return {
        "type": kind,
        "reason": reason,
        "method": props.get(0x15),
        "data": props[0x16].decode() if 0x16 in props else None,
        "reason_string": props.get(0x1F),
    }


def tamper(client_final):
    """The same client-final message with the last proof byte flipped."""
    head, proof = client_final.rsplit(",p=", 1)
    raw = bytearray(base64.b64decode(proof))
    raw[-1] ^= 1
    return head + ",p=" + base64.b64encode(bytes(raw)).decode()


# Instead of the client-final message (--instead): what a misbehaving client sends.
INSTEAD = {
    "ping": lambda method: b"\xc0\x00",
    "auth-0x19": lambda method: auth(0x19, method, b"n,,n=user,r=abcdefghijkl"),
    "other-method": lambda method: auth(0x18, "SCRAM-SHA-1", b"c=biws,r=x,p=AAAA"),
    "stall": lambda method: b"",
}


def exchange(conn, method, client, first_packet, bad_proof, final_reason, instead=None):
    """One SCRAM exchange after `first_packet` (CONNECT or AUTH 0x19) went out: returns
    the steps seen; the last is the final answer (CONNACK, AUTH 0x00 or DISCONNECT)."""
    steps = []
    conn.send(first_packet)
    got = conn.recv()
    steps.append(describe(got))
    if got is None or got[0] != AUTH:
        return steps
    if instead is not None:
        started = time.monotonic()
        conn.send(INSTEAD[instead](method))
        steps.append(describe(conn.recv_within(WAIT * 2)))
        steps[-1]["after_s"] = round(time.monotonic() - started, 1)
        return steps
    client.set_server_first(got[2][0x16].decode())
    final = client.get_client_final()
    if bad_proof:
        final = tamper(final)
    # The connection goes on meanwhile: a PINGREQ in the middle of a re-authentication
    # is answered.
    if final_reason is not None:
        conn.send(b"\xc0\x00")
        steps.append(describe(conn.recv()))
    conn.send(auth(0x18, method, final.encode()))
    got = conn.recv()
    steps.append(describe(got))
    if got is not None and 0x16 in got[2] and got[1] == 0:
        try:
            client.set_server_final(got[2][0x16].decode())
            steps[-1]["verified"] = True
        except Exception as e:  # scramp raises on a wrong server signature
            steps[-1]["verified"] = False
            steps[-1]["error"] = str(e)
    return steps


def scram_client(method, user, password):
    """scramp's client for `method`; for a method scramp does not offer (the tests of
    unknown methods), a SCRAM-SHA-256 client whose messages go out under that name."""
    try:
        return ScramClient([method], user, password)
    except ScramException:
        return ScramClient(["SCRAM-SHA-256"], user, password)


def login(args):
    conn = Conn(args.host, args.port)
    client = scram_client(args.method, args.user, args.password)
    first = client.get_client_first()
    if args.channel_binding:
        first = "p=tls-unique" + first[1:]
    result = {"connect": exchange(conn, args.method, client,
                                  connect(args.method, first.encode(), args.connect_user),
                                  args.bad_proof, None, args.instead)}
    last = result["connect"][-1]
    if last.get("type") == CONNACK and last["reason"] == 0:
        for password in args.reauth or []:
            client = ScramClient([args.method], args.user, password)
            method = args.reauth_method or args.method
            first = auth(0x19, method, client.get_client_first().encode())
            steps = exchange(conn, method, client, first, False, 0, args.reauth_instead)
            if steps[-1].get("type") == AUTH:
                # Re-authenticated: the connection goes on.
                conn.send(b"\xc0\x00")
                steps.append(describe(conn.recv()))
            else:
                steps.append({"closed_after": conn.closed()})
            result.setdefault("reauth", []).append(steps)
    elif last.get("type") == CONNACK:
        result["closed_after"] = conn.closed()
    print(json.dumps(result))


def timing(args):
    """Time the server takes, per login, to answer CONNECT (server-first) and the
    client-final (CONNACK); the client's PBKDF2 is outside both."""
    first_times, final_times, reasons = [], [], set()
    for n in range(args.count):
        conn = Conn(args.host, args.port)
        client = ScramClient([args.method], args.user, args.password)
        started = time.perf_counter()
        conn.send(connect(args.method, client.get_client_first().encode(), None, f"t{n}"))
        got = conn.recv()
        first_times.append(time.perf_counter() - started)
        client.set_server_first(got[2][0x16].decode())
        final = client.get_client_final().encode()
        started = time.perf_counter()
        conn.send(auth(0x18, args.method, final))
        got = conn.recv()
        final_times.append(time.perf_counter() - started)
        reasons.add(got[1])
        conn.sock.close()
    first_times.sort()
    final_times.sort()
    us = lambda t: round(t * 1e6)
    print(json.dumps({
        "count": args.count,
        "reasons": sorted(reasons),
        "server_first_median_us": us(first_times[len(first_times) // 2]),
        "server_first_p90_us": us(first_times[len(first_times) * 9 // 10]),
        "server_final_median_us": us(final_times[len(final_times) // 2]),
        "server_final_p90_us": us(final_times[len(final_times) * 9 // 10]),
        "total_ms": round(sum(first_times + final_times) * 1e3, 1),
    }))


def v3_auth(args):
    """An MQTT 3.1.1 client sending AUTH after CONNACK: the broker closes."""
    conn = Conn(args.host, args.port)
    body = string("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60) + string("v3")
    conn.send(packet(0x10, body))
    connack = conn.recv()
    conn.send(auth(0x19, "SCRAM-SHA-256", b"n,,n=user,r=abcdefghijkl"))
    print(json.dumps({"connack": connack[1], "then": describe(conn.recv())}))


def auth_without_method(args):
    """A v5 client that gave no method at CONNECT sending AUTH: protocol error."""
    conn = Conn(args.host, args.port)
    conn.send(connect())
    connack = conn.recv()
    conn.send(auth(0x19, "SCRAM-SHA-256", b"n,,n=user,r=abcdefghijkl"))
    print(json.dumps({"connack": connack[1], "then": describe(conn.recv()),
                      "closed_after": conn.closed()}))


def auth_first(args):
    """AUTH before CONNECT: the broker closes without a word."""
    conn = Conn(args.host, args.port)
    conn.send(auth(0x19, "SCRAM-SHA-256", b"n,,n=user,r=abcdefghijkl"))
    print(json.dumps({"then": describe(conn.recv())}))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("login", "timing"):
        s = sub.add_parser(name)
        s.add_argument("--method", required=True)
        s.add_argument("--user", required=True)
        s.add_argument("--password", required=True)
        if name == "login":
            s.add_argument("--bad-proof", action="store_true")
            s.add_argument("--connect-user")
            s.add_argument("--channel-binding", action="store_true")
            s.add_argument("--reauth", action="append")
            s.add_argument("--reauth-method")
            s.add_argument("--instead", choices=sorted(INSTEAD))
            s.add_argument("--reauth-instead", choices=sorted(INSTEAD))
        else:
            s.add_argument("--count", type=int, default=200)
    for name in ("v3-auth", "auth-without-method", "auth-first"):
        sub.add_parser(name)
    args = p.parse_args()
    {"login": login, "timing": timing, "v3-auth": v3_auth,
     "auth-without-method": auth_without_method, "auth-first": auth_first}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
