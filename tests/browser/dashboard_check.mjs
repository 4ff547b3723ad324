// Drives the dashboard in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core, against a live ingest. One JSON line of findings on stdout.
//
//   node dashboard_check.mjs URL TOKEN live SCREENSHOT.png
//   node dashboard_check.mjs URL TOKEN offline DEVICE SECONDS
import { chromium } from "playwright-core";

const [url, token, mode, ...rest] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 1400 } });
const out = {};
try {
  await page.goto(url + "/");
  out.redirected_to_login = page.url().endsWith("/login");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#fleet tbody tr");

  if (mode === "live") {
    out.sites = await page.$$eval("#fleet tbody tr td:nth-child(2)", (cells) => [...new Set(cells.map((c) => c.textContent.trim()))]);
    out.devices = await page.$$eval("#fleet tbody tr", (rows) => rows.map((r) => r.dataset.dev));
    out.statuses = await page.$$eval("#fleet tbody tr", (rows) =>
      Object.fromEntries(rows.map((r) => [r.dataset.dev, r.children[2].textContent.trim()])));
    await page.click("#fleet tbody tr td:nth-child(2) a");
    await page.waitForSelector("svg.chart");
    const slots = () => page.$eval("svg.chart", (svg) => Number(svg.dataset.slots));
    out.slots_before = await slots();
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline && (await slots()) <= out.slots_before) await page.waitForTimeout(250);
    out.slots_after = await slots();
    out.ratio = await page.textContent("#ratio");
    await page.click("#lang");
    await page.waitForFunction(() => document.getElementById("consumer").lang === "ja");
    out.consumer_ja = await page.textContent("#consumer");
    await page.screenshot({ path: rest[0], fullPage: true });
    await page.goto(url + "/#/quarantine");
    await page.waitForSelector("#quarantine");
    out.quarantine = await page.$$eval("#quarantine td[data-reason]", (cells) =>
      Object.fromEntries(cells.map((c) => [c.dataset.reason, Number(c.textContent)])));
  } else if (mode === "offline") {
    const [device, seconds] = rest;
    const started = Date.now();
    const status = () => page.$eval(`#fleet tr[data-dev="${device}"] td:nth-child(3)`, (td) => td.textContent.trim()).catch(() => "missing");
    out.status_before = await status();
    while (Date.now() - started < Number(seconds) * 1000 && (await status()) !== "offline") await page.waitForTimeout(200);
    out.status_after = await status();
    out.seen_at_ms = Date.now();
  }
} catch (err) {
  out.error = String(err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
