// mqtt.js over ws:// or wss:// against midge: subscribe, publish one message to the same
// topic, wait for it to come back. Prints one JSON line; exits 0 only if it came back.
//
//   node ws_pubsub.mjs URL [--ca CA_FILE] [--mqtt 4|5]
import { readFileSync } from "node:fs";
import mqtt from "mqtt";

const args = process.argv.slice(2);
const url = args[0];
const option = (name) => {
  const i = args.indexOf(name);
  return i > 0 ? args[i + 1] : undefined;
};
const ca = option("--ca");
const protocolVersion = Number(option("--mqtt") ?? 4);
const topic = "mqttjs/ws";
const message = `hello over ${url.split(":")[0]}`;

const fail = (why) => {
  console.log(JSON.stringify({ ok: false, why: String(why) }));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 10_000).unref();

const client = mqtt.connect(url, {
  protocolVersion,
  clientId: `mqttjs-${protocolVersion}-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 5_000,
  ...(ca ? { ca: readFileSync(ca) } : {}),
});
client.on("error", fail);
client.on("connect", () => {
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) fail(err);
    client.publish(topic, message, { qos: 1 });
  });
});
client.on("message", (t, payload) => {
  const received = payload.toString();
  console.log(JSON.stringify({ ok: received === message, topic: t, received }));
  client.end(false, () => process.exit(received === message ? 0 : 1));
});
