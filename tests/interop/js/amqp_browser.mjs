// Seed 002, 5.2, the browser half: a page with the seed's Paho JS code (npm paho-mqtt
// 1.0.4, whose API is the seed's `Paho.MQTT.Client`) in Debian's Chromium (driven by
// playwright-core) connects over midge's WebSocket listener (path /ws) and subscribes to
// `hello.amqp`; the seed's amqplib code publishes to amq.topic with routing key
// `hello.amqp`, and the page logs it. Needs `[amqp] mqtt_dots_as_separators = true`, as in
// RabbitMQ a `.` in an MQTT topic is a level separator. Then an mqtt.js client publishes
// `hello/amqp`, which the page's `hello.amqp` subscription receives too.
// Prints one JSON line; crates/broker/tests/it/amqp.rs asserts on it.
//
//   node amqp_browser.mjs WS_PORT MQTT_PORT AMQP_PORT
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const amqp = require("amqplib/callback_api");
const [wsPort, mqttPort, amqpPort] = process.argv.slice(2).map(Number);
const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = "/usr/bin/chromium";
const STEP_TIMEOUT = 15_000;

const fail = (why) => {
  console.log(JSON.stringify({ ok: false, why: String(why?.stack ?? why) }));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 60_000).unref();

// The seed's page code; only the host and port differ ('localhost', 15675 in the seed),
// and `function connect {` (a syntax error in the seed) has its `()`. It is called once
// the page has loaded.
const seed = `
let client
function connect () {
    client = new Paho.MQTT.Client('127.0.0.1', Number(${wsPort}), "/ws", "hello.amqp.client/")
    client.userName = 'guest'
    client.password = 'guest'
    client.onMessageArrived = onMessageArrived
    client.connect({onSuccess: onConnect})
}

function onConnect () {
    client.subscribe('hello.amqp')
}

function onMessageArrived (msg) {
     console.log("onMessageArrived:" + msg.payloadString)
}
`;
const page = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>seed 002</title>
<script src="/paho-mqtt.js"></script>
<script>${seed}</script></head>
<body onload="connect()"><p>Paho JS over midge</p></body></html>`;
const bundle = readFileSync(join(here, "node_modules/paho-mqtt/paho-mqtt.js"));

const http = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
  } else if (path === "/paho-mqtt.js") {
    res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));

const profile = mkdtempSync(join(tmpdir(), "midge-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});

// Resolves when the page has logged `line`; repeats `send` every 200 ms until then (the
// seed's page says nothing when its subscription is in place, and QoS 0 sent before then
// is not for it).
function arrival(tab, consoleLines, line, send) {
  return new Promise((resolve, reject) => {
    const timer = setInterval(send, 200);
    const stop = setTimeout(() => {
      clearInterval(timer);
      reject(new Error(`the page never logged "${line}"; console: ${JSON.stringify(consoleLines)}`));
    }, STEP_TIMEOUT);
    tab.on("console", (message) => {
      if (message.text() === line) {
        clearInterval(timer);
        clearTimeout(stop);
        resolve(true);
      }
    });
    send();
  });
}

const connection = {};
let other;
try {
  const tab = context.pages()[0] ?? (await context.newPage());
  const consoleLines = [];
  tab.on("console", (line) => consoleLines.push(line.text()));
  await tab.goto(`http://127.0.0.1:${http.address().port}/`);

  // The seed's amqplib code, apart from host and port.
  await new Promise((resolve, reject) => {
    amqp.connect(
      {
        hostname: "127.0.0.1",
        port: String(amqpPort),
        username: "guest",
        password: "guest",
      },
      (err, conn) => {
        if (err !== null) {
          reject(err);
        } else {
          connection.conn = conn;
          conn.createChannel(function (err, ch) {
            if (err !== null) {
              reject(err);
            } else {
              connection.ch = ch;
              resolve();
            }
          });
        }
      },
    );
  });
  const fromAmqp = await arrival(tab, consoleLines, "onMessageArrived:hello amqp", () =>
    connection.ch.publish("amq.topic", "hello.amqp", Buffer.from("hello amqp")),
  );

  // An MQTT client's hello/amqp is the same topic as the page's hello.amqp.
  other = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, { clientId: "browser-peer", reconnectPeriod: 0 });
  await new Promise((resolve, reject) => {
    other.on("connect", resolve);
    other.on("error", reject);
  });
  const fromMqtt = await arrival(tab, consoleLines, "onMessageArrived:from mqtt", () =>
    other.publish("hello/amqp", "from mqtt"),
  );
  console.log(JSON.stringify({ ok: true, fromAmqp, fromMqtt, console: consoleLines }));
} catch (error) {
  fail(error);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  other?.end(true);
  connection.conn?.close();
  http.close();
}
process.exit(0);
