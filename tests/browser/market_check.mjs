// Drives the market's participants' page in headless Chromium (Debian's
// /usr/bin/chromium) with playwright-core, against a live market API. One
// JSON line of findings on stdout; every request the pages made is in it
// (url, method, headers, body as base64) for the test to search for the key.
//
//   node market_check.mjs URL ACCOUNT SEED_HEX SCREENSHOT.png RECEIPT_SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, account, seedHex, screenshot, receiptShot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const out = { requests: [], console: [] };

async function newPage() {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1200 } });
  page.on("request", (request) => {
    const body = request.postDataBuffer();
    out.requests.push({ url: request.url(), method: request.method(), headers: request.headers(),
                        body: body ? body.toString("base64") : null });
  });
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") out.console.push(m.text()); });
  page.on("pageerror", (err) => out.console.push("pageerror: " + String(err)));
  return page;
}

// What the uPlot chart shows, and whether the pixels around each series'
// first point have the series' colour.
const chartSeen = (page) => page.$eval("#chart", (el) => {
  const u = el.uplot;
  const canvas = el.querySelector(".u-wrap canvas");
  if (!u || !canvas) return { renderer: el.dataset.renderer || null, trades: Number(el.dataset.trades) };
  const ctx = canvas.getContext("2d");
  const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  const near = (a, b) => a.every((v, i) => Math.abs(v - b[i]) < 40);
  const points = u.series.slice(1).map((s, i) => {
    const x = Math.round(u.valToPos(u.data[0][0], "x", true));
    const y = Math.round(u.valToPos(u.data[i + 1][0], s.scale, true));
    const px = ctx.getImageData(x - 2, y - 2, 5, 5).data;
    const colour = hex(typeof s.stroke === "function" ? s.stroke(u, i + 1) : s.stroke);
    let hits = 0;
    for (let p = 0; p < px.length; p += 4) if (px[p + 3] > 0 && near([px[p], px[p + 1], px[p + 2]], colour)) hits++;
    return { label: s.label, points_shown: s.points.show === true || (typeof s.points.show === "function" && s.points.show(u, i + 1) === true), hits, x, y };
  });
  return {
    renderer: el.dataset.renderer,
    trades: Number(el.dataset.trades),
    data_length: u.data[0].length,
    canvas: [canvas.width, canvas.height],
    legend: [...el.querySelectorAll(".u-legend .u-series .u-label")].map((l) => l.textContent.trim()),
    x_span_s: u.scales.x.max - u.scales.x.min,
    points,
  };
});

const bookSeen = (page) => page.$$eval("#book tbody tr[data-order]", (rows) => rows.map((r) => ({
  order: Number(r.dataset.order), side: r.dataset.side, words: r.querySelector("td.words").textContent.trim(),
  cancel: !!r.querySelector("button.cancel") })));

try {
  const page = await newPage();
  await page.goto(url + "/");
  await page.waitForSelector("#book tbody tr[data-order]");
  await page.waitForSelector("#chart[data-renderer]");
  out.book_before = await bookSeen(page);
  out.chart_before = await page.$eval("#chart", (el) => el.dataset.renderer);
  out.uplot_loaded = await page.evaluate(() => typeof window.uPlot === "function");

  // A participant imports the key `crev registry keygen` wrote.
  await page.fill("#account-id", account);
  await page.fill("#seed", seedHex);
  await page.click("#import button[type=submit]");
  await page.waitForSelector("#held");
  out.seed_field_after_import = await page.$$eval("#seed", (els) => els.map((e) => e.value));
  out.held_before = await page.$eval("#held", (el) => Number(el.dataset.grams));
  out.who = await page.textContent("#who");

  // A buy of 0.800 kg at up to 25.00 yen/kg, only from places under Japan.
  await page.fill("#buy-form input[name=kg]", "0.800");
  await page.fill("#buy-form input[name=price]", "25.00");
  await page.fill("#buy-form input[name=places]", "Japan");
  await page.click("#buy-form button[type=submit]");
  await page.waitForSelector("#placed");
  out.placed = await page.$eval("#placed", (el) => ({ order: Number(el.dataset.order), filled: Number(el.dataset.filled),
    left: Number(el.dataset.left), text: el.textContent.replace(/\s+/g, " ").trim() }));
  out.fills = await page.$$eval("#result ul.fills li", (items) => items.map((li) => li.textContent.replace(/\s+/g, " ").trim()));
  out.error_after_buy = await page.$$eval("#error", (els) => els.map((e) => e.textContent));
  await page.waitForSelector("#trades tbody tr[data-trade]");
  out.trades = await page.$$eval("#trades tbody tr[data-trade]", (rows) => rows.map((r) => Number(r.dataset.trade)));
  out.held_after_buy = await page.$eval("#held", (el) => Number(el.dataset.grams));
  await page.waitForSelector("#chart[data-renderer=uplot], #chart[data-renderer=table]");
  out.chart = await chartSeen(page);
  out.book_after = await bookSeen(page);

  // Retire part of it, for a named beneficiary.
  await page.fill("#retire-form input[name=kg]", "0.500");
  await page.fill("#retire-form input[name=beneficiary]", "Koriyama City Library");
  await page.fill("#retire-form input[name=purpose]", "FY2026 Scope 2 report");
  await page.click("#retire-form button[type=submit]");
  await page.waitForSelector("#retired");
  out.retirement = await page.$eval("#retired", (el) => Number(el.dataset.retirement));
  out.held_after_retire = await page.$eval("#held", (el) => Number(el.dataset.grams));
  await page.waitForSelector("#chart[data-renderer=uplot], #chart[data-renderer=table]");
  await page.screenshot({ path: screenshot, fullPage: true });

  // Its receipt.
  await page.click("#receipt-link");
  await page.waitForSelector("#receipt");
  out.receipt = await page.$eval("#receipt", (el) => ({
    retirement: Number(el.dataset.retirement),
    kg: el.querySelector("#receipt-kg").textContent.trim(),
    beneficiary: el.querySelector("#receipt-beneficiary").textContent.trim(),
    lots: [...el.querySelectorAll("#receipt-lots tbody tr")].map((r) => [...r.children].map((c) => c.textContent.trim())),
  }));
  await page.screenshot({ path: receiptShot, fullPage: true });

  // Without uPlot (a wheel built without npm): the same trades as a table.
  const plain = await newPage();
  await plain.route("**/static/vendor/**", (route) => route.abort());
  await plain.goto(url + "/");
  await plain.waitForSelector("#chart[data-renderer=table]");
  out.fallback_rows = await plain.$$eval("#chart table tbody tr", (rows) => rows.map((r) => [...r.children].map((c) => c.textContent.trim())));
  await plain.close();
} catch (err) {
  out.error = String(err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
