#!/usr/bin/env python3
"""A connected client's PINGREQ round trip, quiet and then under a connect flood, against
any MQTT broker: the measurement behind RELIABILITY.md's "Connection floods and slowloris"
comparison with Mosquitto (issue 9: connected clients' p99 within 2x of the quiet run).

    scripts/flood_ping.py PORT [SECONDS] [BURST]
    FLOOD_PORT=1884 scripts/flood_ping.py 1883 20 500   # ping one broker, flood another

The pinger (MQTT 3.1.1, clean session, TCP_NODELAY) sends a PINGREQ every 20 ms and times
each PINGRESP: 2 s alone, then while a second process opens BURST TCP connections four times
a second, each burst from one of 127.0.0.2-.9 in turn, and closes them 10 ms later without
sending anything. Plain sockets, no MQTT library, so any broker can be measured the same way.
Prints p50, p99 and max of both phases and the ratio of the p99s.
"""

import os
import socket
import struct
import subprocess
import sys
import time


def connect_packet(client_id):
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack("!H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


def ping(port, duration):
    """PINGREQ round trips, in milliseconds, for `duration` seconds."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet("flood-ping-%d" % os.getpid()))
    connack = s.recv(4)
    if not connack or connack[0] != 0x20:
        sys.exit("no CONNACK from port %d: %r" % (port, connack))
    times = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        started = time.perf_counter()
        s.sendall(b"\xc0\x00")
        got = b""
        while len(got) < 2:
            chunk = s.recv(2 - len(got))
            if not chunk:
                sys.exit("the broker closed the pinger's connection")
            got += chunk
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    s.close()
    return sorted(times)


def flood(port, duration, burst):
    """Bursts of `burst` connects, four a second, each closed 10 ms later unused."""
    end = time.monotonic() + duration
    i = 0
    while time.monotonic() < end:
        source = "127.0.0.%d" % (2 + i % 8)
        i += 1
        sockets = []
        for _ in range(burst):
            s = socket.socket()
            s.setblocking(False)
            s.bind((source, 0))
            s.connect_ex(("127.0.0.1", port))
            sockets.append(s)
        time.sleep(0.01)
        for s in sockets:
            s.close()
        time.sleep(0.24)


def p99(times):
    return times[round((len(times) - 1) * 0.99)]


def spread(times):
    return "p50 %.2f p99 %.2f max %.2f ms (n=%d)" % (
        times[len(times) // 2],
        p99(times),
        times[-1],
        len(times),
    )


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--flood":
        flood(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    port = int(sys.argv[1])
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 20
    burst = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    flood_port = int(os.environ.get("FLOOD_PORT", port))
    quiet = ping(port, 2)
    flooder = subprocess.Popen(
        [sys.executable, __file__, "--flood", str(flood_port), str(seconds), str(burst)]
    )
    time.sleep(0.3)
    loud = ping(port, seconds - 0.6)
    flooder.wait()
    print(
        "quiet %s | flood %s | p99 x%.1f"
        % (spread(quiet), spread(loud), p99(loud) / p99(quiet))
    )


if __name__ == "__main__":
    main()
