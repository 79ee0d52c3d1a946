"""paho-mqtt over TLS against midge.

Verifies the broker's certificate against a CA file (hostname checked against the
certificate's IP address), optionally presents a client certificate, subscribes to a topic,
publishes one message to it and waits to receive it back. Prints one JSON line with what it
saw; exits 0 only if the message came back.
"""

import argparse
import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--tls-version", choices=["1.2", "1.3"])
    parser.add_argument("--mqtt", choices=["3.1.1", "5"], default="3.1.1")
    parser.add_argument("--client-id", default="paho-tls")
    parser.add_argument("--topic", default="paho/tls")
    parser.add_argument("--message", default="hello over TLS")
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.cafile)
    if args.certfile:
        context.load_cert_chain(args.certfile, args.keyfile)
    if args.tls_version:
        version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[args.tls_version]
        context.minimum_version = version
        context.maximum_version = version

    protocol = mqtt.MQTTv5 if args.mqtt == "5" else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol)
    client.tls_set_context(context)

    result = {"connack": None, "tls_version": None, "received": None}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        result["connack"] = str(reason_code)
        if reason_code.is_failure:
            done.set()
            return
        result["tls_version"] = client.socket().version()
        client.subscribe(args.topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        client.publish(args.topic, args.message, qos=1)

    def on_message(client, userdata, message):
        result["received"] = message.payload.decode()
        done.set()

    def on_connect_fail(client, userdata):
        result["connack"] = "connection failed"
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_connect_fail = on_connect_fail

    try:
        client.connect("127.0.0.1", args.port, keepalive=30)
    except (ssl.SSLError, OSError) as error:
        result["connack"] = f"TLS/connect error: {error}"
        print(json.dumps(result))
        return 1
    client.loop_start()
    done.wait(timeout=10)
    client.disconnect()
    client.loop_stop()
    print(json.dumps(result))
    return 0 if result["received"] == args.message else 1


if __name__ == "__main__":
    sys.exit(main())
