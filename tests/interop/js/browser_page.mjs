// The README's WebSocket page in headless Chromium against midge.
//
// Takes the ```html block from the README's "WebSocket" section, serves it on loopback
// with mqtt.js's browser bundle from node_modules, opens it in Debian's Chromium (driven by
// playwright-core), and checks that the page connects, shows a message another client
// publishes, and publishes when its button is clicked. Saves a screenshot.
//
//   node browser_page.mjs README WS_URL MQTT_URL SCREENSHOT
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { chromium } from "playwright-core";

const [readmePath, wsUrl, mqttUrl, screenshotPath] = process.argv.slice(2);
const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = "/usr/bin/chromium";
const STEP_TIMEOUT = 15_000;

const fail = (why) => {
  console.log(JSON.stringify({ ok: false, why: String(why?.stack ?? why) }));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 60_000).unref();

// The page exactly as the README shows it.
const readme = readFileSync(readmePath, "utf8");
const section = readme.split(/^## /m).find((s) => s.startsWith("WebSocket"));
const page = section?.match(/```html\n([\s\S]*?)```/)?.[1];
if (!page) fail("no ```html block in the README's WebSocket section");
const bundle = readFileSync(join(here, "node_modules/mqtt/dist/mqtt.min.js"));

const http = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path === "/" || path === "/chat.html") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(page);
  } else if (path === "/mqtt.min.js") {
    res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => http.listen(0, "127.0.0.1", resolve));
const pageUrl = `http://127.0.0.1:${http.address().port}/chat.html?broker=${encodeURIComponent(wsUrl)}`;

// The other client, over plain MQTT.
const other = mqtt.connect(mqttUrl, { clientId: "browser-test-peer", reconnectPeriod: 0 });
other.on("error", fail);
await new Promise((resolve) => other.on("connect", resolve));
const fromBrowser = new Promise((resolve) =>
  other.on("message", (topic, payload) => resolve({ topic, payload: payload.toString() })),
);
await other.subscribeAsync("chat/browser");

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
try {
  const tab = context.pages()[0] ?? (await context.newPage());
  const consoleLines = [];
  tab.on("console", (line) => consoleLines.push(line.text()));
  await tab.goto(pageUrl);
  await tab.waitForFunction(
    () => document.getElementById("status")?.textContent === "subscribed to chat/#",
    null,
    { timeout: STEP_TIMEOUT },
  ).catch(async () => fail(`page never subscribed: status "${await tab.textContent("#status")}", console ${JSON.stringify(consoleLines)}`));

  // Another client publishes; the page shows it.
  const fromNode = "hello from node";
  await other.publishAsync("chat/node", fromNode);
  await tab.waitForFunction(
    (text) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === text),
    `chat/node: ${fromNode}`,
    { timeout: STEP_TIMEOUT },
  );

  // A click publishes; the other client receives it.
  const fromChromium = "hello from chromium";
  await tab.fill("#text", fromChromium);
  await tab.click("#send");
  const received = await Promise.race([
    fromBrowser,
    new Promise((_, reject) => setTimeout(() => reject(new Error("no message from the page")), STEP_TIMEOUT)),
  ]);
  // The page is subscribed to chat/#, so its own message shows up too.
  await tab.waitForFunction(
    (text) => [...document.querySelectorAll("#messages li")].some((li) => li.textContent === text),
    `chat/browser: ${fromChromium}`,
    { timeout: STEP_TIMEOUT },
  );
  await tab.screenshot({ path: screenshotPath });
  const shown = await tab.$$eval("#messages li", (items) => items.map((li) => li.textContent));
  console.log(JSON.stringify({ ok: true, shown, received }));
} catch (error) {
  fail(error);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  other.end(true);
  http.close();
}
process.exit(0);
