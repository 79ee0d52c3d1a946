// The admin dashboard (GET / on the admin listener) in headless Chromium against midge.
//
// Logs in with HTTP Basic credentials, sees a client that connects appear in the clients
// table, kicks it and sees it go (and the client sees its connection end), then opens the
// retained browser and deletes a message, then watches a live message arrive. Each step
// waits for what the page shows.
// Saves a screenshot of the overview.
//
//   node dashboard.mjs ADMIN_URL MQTT_URL USER PASSWORD SCREENSHOT
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import mqtt from "mqtt";
import { chromium } from "playwright-core";

const [adminUrl, mqttUrl, username, password, screenshotPath] = process.argv.slice(2);
const CHROMIUM = "/usr/bin/chromium";
const STEP_TIMEOUT = 15_000;

const fail = (why) => {
  console.log(JSON.stringify({ ok: false, why: String(why?.stack ?? why) }));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 90_000).unref();

const steps = [];
const profile = mkdtempSync(join(tmpdir(), "midge-dashboard-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  httpCredentials: { username, password },
  viewport: { width: 1200, height: 800 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let device;
try {
  const tab = context.pages()[0] ?? (await context.newPage());
  const consoleLines = [];
  tab.on("console", (line) => consoleLines.push(line.text()));

  // Log in: the page loads with the credentials and shows the broker's version.
  const answer = await tab.goto(adminUrl);
  if (answer.status() !== 200) fail(`GET / answered ${answer.status()}`);
  await tab.waitForFunction(() => document.getElementById("meta").textContent.startsWith("version "),
    null, { timeout: STEP_TIMEOUT });
  steps.push(`logged in: ${await tab.textContent("#meta")}`);

  // A device connects; the clients table shows it.
  device = mqtt.connect(mqttUrl, { clientId: "dashboard-device-1", reconnectPeriod: 0, protocolVersion: 5 });
  device.on("error", () => {});
  await new Promise((resolve, reject) => { device.on("connect", resolve); device.on("error", reject); });
  const closed = new Promise((resolve) => device.on("disconnect", (packet) => resolve(packet.reasonCode)));
  await tab.click("nav button[data-tab=clients]");
  const deviceRow = tab.locator("#client-rows tr", { hasText: "dashboard-device-1" });
  await deviceRow.waitFor({ timeout: STEP_TIMEOUT });
  steps.push("device listed");

  // Details, then kick: the row goes, and the device was told why (0x98).
  await deviceRow.getByRole("button", { name: "Details" }).click();
  await tab.waitForFunction(() => document.getElementById("client-detail").textContent.includes("\"protocol\": \"5.0\""),
    null, { timeout: STEP_TIMEOUT });
  steps.push("details shown");
  await deviceRow.getByRole("button", { name: "Kick" }).click();
  await deviceRow.waitFor({ state: "detached", timeout: STEP_TIMEOUT });
  const reason = await Promise.race([closed,
    new Promise((_, reject) => setTimeout(() => reject(new Error("device not disconnected")), STEP_TIMEOUT))]);
  steps.push(`device kicked: reason ${reason}`);

  // Retained browser: a retained message shows, and Delete removes it.
  const publisher = await mqtt.connectAsync(mqttUrl, { clientId: "dashboard-publisher", reconnectPeriod: 0 });
  await publisher.publishAsync("dash/kept", "21.5", { retain: true, qos: 1 });
  await publisher.endAsync();
  await tab.click("nav button[data-tab=retained]");
  const retainedRow = tab.locator("#retained-rows tr", { hasText: "dash/kept" });
  await retainedRow.waitFor({ timeout: STEP_TIMEOUT });
  if (!(await retainedRow.textContent()).includes("21.5")) fail("payload not shown");
  steps.push("retained listed");
  await retainedRow.getByRole("button", { name: "Delete" }).click();
  await retainedRow.waitFor({ state: "detached", timeout: STEP_TIMEOUT });
  steps.push("retained deleted");

  // Live view: watch dash/#, a message published now shows.
  await tab.click("nav button[data-tab=live]");
  await tab.fill("#live-filter", "dash/#");
  await tab.click("#live-start");
  await tab.waitForFunction(() => document.getElementById("live-status").textContent === "watching dash/#",
    null, { timeout: STEP_TIMEOUT });
  const talker = await mqtt.connectAsync(mqttUrl, { clientId: "dashboard-talker", reconnectPeriod: 0 });
  await talker.publishAsync("dash/live", "hello live");
  await talker.endAsync();
  await tab.locator("#live-rows tr", { hasText: "hello live" }).waitFor({ timeout: STEP_TIMEOUT });
  steps.push("live message shown");
  await tab.click("#live-stop");

  // The overview, for the screenshot (a few samples make the chart).
  await tab.click("nav button[data-tab=overview]");
  await tab.waitForFunction(() => document.getElementById("line-in").getAttribute("points").split(" ").length >= 2,
    null, { timeout: STEP_TIMEOUT });
  await tab.screenshot({ path: screenshotPath });
  const errors = await tab.textContent("#error");
  if (errors) fail(`the page shows an error: ${errors}`);
  console.log(JSON.stringify({ ok: true, steps, console: consoleLines }));
} catch (error) {
  fail(error);
} finally {
  device?.end(true);
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
