// The dashboard's witnesses view in headless Chromium (Debian's /usr/bin/chromium), with playwright-core.
// One JSON line of what the page shows on stdout.
//
//   node witnesses_check.mjs URL TOKEN SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, token, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 700 } });
const out = {};
try {
  await page.goto(url + "/");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#fleet");
  // As an operator would: by the link in the header.
  await page.click("header nav a[href='#/witnesses']");
  await page.waitForSelector("#witnesses tbody tr");
  out.heading = await page.textContent("#view h2");
  out.caption = await page.textContent("#witnesses caption");
  out.column_headers = await page.$$eval("#witnesses thead th[scope=col]", (ths) => ths.map((th) => th.textContent.trim()));
  out.rows = await page.$$eval("#witnesses tbody tr", (rows) => rows.map((r) => ({
    witness: r.dataset.witness,
    cells: [...r.children].map((td) => td.textContent.trim()),
    status: r.querySelector("[data-status]").dataset.status,
  })));
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (err) {
  out.error = String(err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
