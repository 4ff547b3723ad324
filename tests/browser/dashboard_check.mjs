// Drives the dashboard in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core, against a live ingest. One JSON line of findings on stdout.
//
//   node dashboard_check.mjs URL TOKEN live SCREENSHOT.png ONE_SLOT_SITE ONE_SLOT_SCREENSHOT.png
//   node dashboard_check.mjs URL TOKEN offline DEVICE SECONDS
//   node dashboard_check.mjs URL TOKEN fallback SITE SCREENSHOT.png   (uPlot not installed: SVG charts)
import { chromium } from "playwright-core";

const [url, token, mode, ...rest] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 1400 } });
const out = {};
const warnings = [];
page.on("console", (message) => { if (message.type() === "warning") warnings.push(message.text()); });

// What a uPlot chart shows: its canvas, its legend, and whether the pixels
// around each series' first point have the series' colour (a point or a line).
const uplotChart = (id) => page.$eval("#" + id, (el) => {
  const u = el.uplot;
  const canvas = el.querySelector(".u-wrap canvas");
  if (!u || !canvas) return { renderer: el.dataset.renderer || null };
  const ctx = canvas.getContext("2d");
  const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  const near = (a, b) => a.every((v, i) => Math.abs(v - b[i]) < 40);
  const points = u.series.slice(1).map((s, i) => {
    const x = Math.round(u.valToPos(u.data[0][0], "x", true));
    const y = Math.round(u.valToPos(u.data[i + 1][0], "y", true));
    if (!Number.isFinite(x) || !Number.isFinite(y)) return { label: s.label, hits: 0, points_shown: false, error: [u.data[0][0], u.data[i + 1][0], x, y, u.scales.x.min, u.scales.x.max, u.scales.y.min, u.scales.y.max] };
    const px = ctx.getImageData(x - 2, y - 2, 5, 5).data;
    let hits = 0;
    for (let p = 0; p < px.length; p += 4) if (px[p + 3] > 0 && near([px[p], px[p + 1], px[p + 2]], hex(typeof s.stroke === "function" ? s.stroke(u, i + 1) : s.stroke))) hits++;
    return { label: s.label, points_shown: s.points.show === true || (typeof s.points.show === "function" && s.points.show(u, i + 1)), hits };
  });
  const all = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let p = 0; p < all.length; p += 4) if (all[p + 3] > 0) drawn++;
  return {
    renderer: el.dataset.renderer,
    slots: Number(el.dataset.slots),
    data_length: u.data[0].length,
    canvas: [canvas.width, canvas.height],
    drawn_pixels: drawn,
    legend: [...el.querySelectorAll(".u-legend .u-series .u-label")].map((l) => l.textContent.trim()),
    // uPlot paints its axes on the canvas: these are the labels it painted.
    y_label: u.axes[1].label,
    x_ticks: (u.axes[0]._values || []).join(" | "),
    x_span_s: u.scales.x.max - u.scales.x.min,
    points,
  };
});
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
    await page.waitForSelector("#chart-power[data-slots]");
    const slots = () => page.$eval("#chart-power", (el) => Number(el.dataset.slots));
    out.slots_before = await slots();
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline && (await slots()) <= out.slots_before) await page.waitForTimeout(250);
    out.slots_after = await slots();
    out.ratio = await page.textContent("#ratio");
    out.power = await uplotChart("chart-power");
    out.energy = await uplotChart("chart-energy");
    await page.click("#lang");
    await page.waitForFunction(() => document.getElementById("consumer").lang === "ja");
    out.consumer_ja = await page.textContent("#consumer");
    await page.waitForSelector("#chart-power .u-wrap canvas");
    out.power_ja = await uplotChart("chart-power");
    await page.screenshot({ path: rest[0], fullPage: true });
    // A site with a single 30-minute slot: uPlot draws no line, only the points.
    await page.goto(url + "/#/site/" + encodeURIComponent(rest[1]));
    // A hash change keeps the page: wait until the other site's view, and its charts, have replaced the first.
    await page.waitForFunction((site) => {
      const heading = document.querySelector("#view h2, h2");
      return heading !== null && heading.textContent === "Site " + site;
    }, rest[1]);
    // Both charts drawn by uPlot, with their data: under load one may come a moment after the other.
    await page.waitForFunction(() => ["chart-power", "chart-energy"].every((id) => {
      const el = document.getElementById(id);
      return el !== null && el.uplot && el.dataset.slots && el.querySelector(".u-wrap canvas");
    }));
    out.one_slot_power = await uplotChart("chart-power");
    out.one_slot_energy = await uplotChart("chart-energy");
    await page.screenshot({ path: rest[2], fullPage: true });
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
  } else if (mode === "fallback") {
    await page.goto(url + "/#/site/" + encodeURIComponent(rest[0]));
    await page.waitForSelector("#chart-energy svg.chart");
    out.renderers = await page.$$eval("div.chart", (els) => els.map((el) => el.dataset.renderer));
    out.svg_slots = await page.$$eval("svg.chart", (els) => els.map((el) => Number(el.dataset.slots)));
    out.svg_points = await page.$$eval("svg.chart", (els) => els.map((el) => el.querySelectorAll("circle").length));
    out.uplot_canvases = await page.$$eval(".u-wrap canvas", (els) => els.length);
    // Another render on the same page must not warn again.
    await page.evaluate(() => { location.hash = "#/"; });
    await page.waitForSelector("#fleet tbody tr");
    await page.evaluate((site) => { location.hash = "#/site/" + encodeURIComponent(site); }, rest[0]);
    await page.waitForSelector("#chart-energy svg.chart");
    await page.screenshot({ path: rest[1], fullPage: true });
  }
  out.warnings = warnings;
} catch (err) {
  out.error = String(err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
