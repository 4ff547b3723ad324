// The participants' page of the crev market. It uses only the JSON API under
// /api/v1 (see /api/v1/openapi.json). The public part shows the book, the
// trades and retirement receipts. The account part holds the account's key
// in this tab's memory (never stored, never sent): orders, cancels,
// retirements and the holdings' view token are signed here (cose.js), and
// only the signed COSE_Sign1 bytes go to the server.
"use strict";

const C = window.crevCose;
const view = document.getElementById("view");
const panel = document.getElementById("account");
const state = {
  signer: null,        // { key (non-extractable CryptoKey), publicKey, kid }
  account: null,
  holdings: null,      // the last holdings the server gave, oldest slot first
  mine: new Set(),     // ids of the orders placed from this page
  result: null,        // what the last action did (HTML)
  error: null,
  receipts: [],        // retirements made from this page
};
let charts = [];

// ------------------------------------------------------------------ quantities, exactly

// C-REV is whole grams (SPEC §8), shown as kg with 3 decimals; prices are 1/100 yen per kg.
function kg(grams) {
  return Math.floor(grams / 1000) + "." + String(grams % 1000).padStart(3, "0");
}

function yen(hundredths) {
  return Math.floor(hundredths / 100) + "." + String(hundredths % 100).padStart(2, "0");
}

function parseKg(textValue) {
  const m = /^\s*([0-9]{1,12})(?:\.([0-9]{1,3}))?\s*$/.exec(textValue);
  if (!m) throw new Error("a quantity is kg with up to 3 decimals, such as 0.800");
  const grams = Number(m[1]) * 1000 + Number((m[2] || "").padEnd(3, "0"));
  if (grams <= 0) throw new Error("the quantity must be more than 0 kg");
  return grams;
}

function parsePrice(textValue) {
  const m = /^\s*([0-9]{1,10})(?:\.([0-9]{1,2}))?\s*$/.exec(textValue);
  if (!m) throw new Error("a price is yen per kg with up to 2 decimals, such as 20.00");
  const hundredths = Number(m[1]) * 100 + Number((m[2] || "").padEnd(2, "0"));
  if (hundredths <= 0) throw new Error("the price must be more than 0 yen/kg");
  return hundredths;
}

function parseList(textValue) {
  const items = textValue.split(",").map((s) => s.trim()).filter((s) => s);
  return [...new Set(items)].sort();  // the order map keeps each condition sorted and unique
}

function text(value) {
  const span = document.createElement("span");
  span.textContent = String(value);
  return span.innerHTML;
}

const when = new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeStyle: "short", hourCycle: "h23" });
function at(seconds) { return seconds === null || seconds === undefined ? "—" : when.format(new Date(seconds * 1000)); }
const clock = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
const day = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short" });
const slotWhen = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
function slotAt(seconds) { return slotWhen.format(new Date(seconds * 1000)); }
function nowS() { return Math.floor(Date.now() / 1000); }

function either(items) {
  const shown = items.map(text);
  return shown.length < 2 ? shown.join("") : shown.slice(0, -1).join(", ") + " or " + shown[shown.length - 1];
}

// An order's conditions in words.
function describe(entry) {
  const price = entry.price_yen_per_kg;
  if (entry.side === "sell") {
    return `sells up to ${kg(entry.grams_left)} kg of ${text(entry.type)} from ${text(entry.place)} at ${price} yen/kg or more`;
  }
  const c = entry.conditions || { sellers: [], places: [], types: [], slot_from: null, slot_to: null };
  const parts = [];
  if (c.sellers.length) parts.push("only from " + (c.sellers.length > 1 ? "sellers " : "seller ") + either(c.sellers));
  if (c.places.length) parts.push("only from places under " + either(c.places));
  if (c.types.length) parts.push("only of types under " + either(c.types));
  if (c.slot_from !== null) parts.push("only slots starting at or after " + at(c.slot_from));
  if (c.slot_to !== null) parts.push("only slots ending by " + at(c.slot_to));
  const terms = parts.length ? parts.join(", ") : "any seller, any place, any type";
  return `buys up to ${kg(entry.grams_left)} kg at up to ${price} yen/kg, ${terms}`;
}

// ------------------------------------------------------------------ the API

async function api(path, options = {}) {
  const response = await fetch("/api/v1" + path, { credentials: "omit", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || response.statusText);
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return body;
}

function postSigned(path, signed) {
  return api(path, { method: "POST", headers: { "content-type": "application/cose" }, body: signed });
}

async function viewToken() {
  const token = await C.signMap({ 0: 1, 1: state.account, 2: "view", 3: nowS() }, state.signer);
  return "CREV " + C.base64(token);
}

async function loadHoldings() {
  state.holdings = await api("/accounts/" + encodeURIComponent(state.account) + "/holdings",
                             { headers: { authorization: await viewToken() } });
  return state.holdings;
}

// ------------------------------------------------------------------ the public views

function chartHtml() {
  return `<h3>Price and volume</h3><div class="chart" id="chart"></div>`;
}

function drawChart(trades) {
  const el = document.getElementById("chart");
  const sorted = [...trades].sort((a, b) => a.time - b.time || a.trade - b.trade);
  el.dataset.trades = String(sorted.length);
  if (!sorted.length) { el.dataset.renderer = "none"; el.innerHTML = "<p class=\"muted\">No trades yet.</p>"; return; }
  if (typeof window.uPlot !== "function") {
    // uPlot is not installed (`make vendor`): the same numbers as a table.
    el.dataset.renderer = "table";
    el.innerHTML = `<table class="series"><thead><tr><th>Time</th><th>Price (yen/kg)</th><th>Volume (kg)</th></tr></thead><tbody>
      ${sorted.map((t) => `<tr><td>${at(t.time)}</td><td class="num">${t.price_yen_per_kg}</td><td class="num">${kg(t.grams)}</td></tr>`).join("")}
      </tbody></table>`;
    return;
  }
  const data = [sorted.map((t) => t.time), sorted.map((t) => Number(t.price_yen_per_kg)), sorted.map((t) => t.grams / 1000)];
  // Prices in the upper part, volumes in the lower: a trade's two points never hide each other.
  const first = data[0][0], last = data[0][data[0].length - 1];
  const xRange = first === last ? [first - 3600, last + 3600] : [first - (last - first) * 0.05, last + (last - first) * 0.05];
  const above = (u, min, max) => [0, max > 0 ? max * 1.25 : 1];
  const below = (u, min, max) => [0, max > 0 ? max * 2.5 : 1];
  const bars = window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.4, 24] }) : undefined;
  const options = {
    width: Math.max(320, Math.min(900, el.clientWidth || 640)),
    height: 240,
    scales: {
      // One trade: an hour either side.
      // From the trades' own times (uPlot widens a single point's axis to years).
      x: { time: true, range: () => xRange },
      yen: { range: above },
      kg: { range: below },
    },
    axes: [
      { size: 50, values: (u, splits) => splits.map((t, i) => {
        const d = new Date(t * 1000);
        return clock.format(d) + (i === 0 || (d.getHours() === 0 && d.getMinutes() === 0) ? "\n" + day.format(d) : "");
      }) },
      { scale: "yen", label: "yen/kg", size: 60, values: (u, splits) => splits.map((v) => v.toFixed(2)) },
      { scale: "kg", label: "kg", side: 1, size: 60, grid: { show: false }, values: (u, splits) => splits.map((v) => v.toFixed(3)) },
    ],
    series: [
      { label: "Time", value: (u, t) => t === null ? "—" : at(t) },
      { label: "Price", scale: "yen", stroke: "#17432f", width: 2, value: (u, v) => v === null ? "—" : v.toFixed(2) + " yen/kg",
        // uPlot draws no line through a single point; the points keep one trade visible.
        points: { show: true, size: 8, stroke: "#17432f", fill: "#17432f" } },
      { label: "Volume", scale: "kg", stroke: "#1f5fa8", fill: "#1f5fa855", width: 1, paths: bars, value: (u, v) => v === null ? "—" : v.toFixed(3) + " kg",
        points: { show: true, size: 8, stroke: "#1f5fa8", fill: "#1f5fa8" } },
    ],
  };
  el.innerHTML = "";
  const chart = new window.uPlot(options, data, el);
  el.dataset.renderer = "uplot";
  el.uplot = chart;  // for the browser test
  charts.push(chart);
}

function dropCharts() {
  for (const chart of charts) chart.destroy();
  charts = [];
}

function ownOrder(entry) {
  return state.account !== null && (state.mine.has(entry.order) || entry.account === state.account);
}

async function marketView() {
  const [book, trades] = await Promise.all([api("/book"), api("/trades")]);
  dropCharts();
  const sells = book.filter((e) => e.side === "sell").length;
  view.innerHTML = `
    <div class="cards">
      <div class="card">Resting sells<b>${sells}</b></div>
      <div class="card">Resting buys<b>${book.length - sells}</b></div>
      <div class="card">Trades<b id="trade-count">${trades.length}</b></div>
      <div class="card">Last price<b>${trades.length ? trades[trades.length - 1].price_yen_per_kg + " yen/kg" : "—"}</b></div>
    </div>
    <h3>The book</h3>
    <table id="book"><thead><tr><th>Order</th><th>Side</th><th>Account</th><th>Left (kg)</th><th>Price (yen/kg)</th><th>Conditions</th><th></th></tr></thead><tbody>
    ${book.map((e) => `<tr data-order="${e.order}" data-side="${e.side}" class="${e.side}">
      <td>#${e.order}</td><td>${e.side}</td><td>${text(e.account)}</td><td class="num">${kg(e.grams_left)}</td>
      <td class="num">${e.price_yen_per_kg}</td><td class="words">${describe(e)}${e.expires ? `, until ${at(e.expires)}` : ""}</td>
      <td>${ownOrder(e) ? `<button class="cancel" data-order="${e.order}">Cancel</button>` : ""}</td></tr>`).join("")
      || `<tr><td colspan="7" class="muted">No resting orders.</td></tr>`}</tbody></table>
    ${chartHtml()}
    <h3>Trades</h3>
    <table id="trades"><thead><tr><th>Trade</th><th>Time</th><th>Buy</th><th>Sell</th><th>kg</th><th>Price (yen/kg)</th><th>Amount (yen)</th></tr></thead><tbody>
    ${[...trades].reverse().map((t) => `<tr data-trade="${t.trade}"><td>#${t.trade}</td><td>${at(t.time)}</td><td>#${t.buy}</td><td>#${t.sell}</td>
      <td class="num">${kg(t.grams)}</td><td class="num">${t.price_yen_per_kg}</td><td class="num">${t.amount_yen}</td></tr>`).join("")
      || `<tr><td colspan="7" class="muted">No trades yet.</td></tr>`}</tbody></table>`;
  drawChart(trades);
  view.querySelectorAll("button.cancel").forEach((b) => b.onclick = () => act(() => cancel(Number(b.dataset.order))));
}

async function receiptView(id) {
  dropCharts();
  const form = `<form id="receipt-form" class="inline"><label>Retirement id <input id="receipt-id" inputmode="numeric" size="8" value="${id === null ? "" : id}"></label>
    <button type="submit">Open receipt</button></form>`;
  if (id === null) {
    view.innerHTML = `<h2>Retirement receipts</h2>${form}`;
  } else {
    let r;
    try {
      r = await api("/retirements/" + encodeURIComponent(id));
    } catch (err) {
      view.innerHTML = `<h2>Retirement receipts</h2>${form}<p class="error">${text(err.message)}</p>`;
      bindReceiptForm();
      return;
    }
    view.innerHTML = `${form}
      <div class="receipt" id="receipt" data-retirement="${r.retirement}">
        <h2>Retirement receipt #${r.retirement}</h2>
        <p class="big"><b id="receipt-kg">${kg(r.grams)} kg-CO2</b> retired for good</p>
        <dl>
          <dt>Beneficiary</dt><dd id="receipt-beneficiary">${text(r.beneficiary)}</dd>
          <dt>Purpose</dt><dd>${text(r.purpose)}</dd>
          <dt>Reporting year</dt><dd>${r.year}</dd>
          <dt>Retired by</dt><dd>${text(r.account)}</dd>
          <dt>Signed at</dt><dd>${at(r.time)}</dd>
        </dl>
        <h3>From these lots, oldest slot first</h3>
        <table id="receipt-lots"><thead><tr><th>Lot</th><th>Site</th><th>Device</th><th>Type</th><th>Place</th><th>Slot</th><th>kg</th></tr></thead><tbody>
        ${r.lots.map((l) => `<tr><td>${text(l.lot)}</td><td>${text(l.site)}</td><td>${text(l.dev)}</td><td>${text(l.type)}</td><td>${text(l.place)}</td>
          <td>${at(l.slot)}</td><td class="num">${kg(l.grams)}</td></tr>`).join("")}</tbody></table>
        <p class="muted">The full trace: <code>crev audit trace ${r.retirement}</code>, checked offline with <code>crev audit verify</code>.</p>
      </div>`;
  }
  bindReceiptForm();
}

function bindReceiptForm() {
  document.getElementById("receipt-form").onsubmit = (e) => {
    e.preventDefault();
    const id = document.getElementById("receipt-id").value.trim();
    if (/^[0-9]+$/.test(id)) location.hash = "#/receipt/" + id;
  };
}

// ------------------------------------------------------------------ the account

function options(values, selected) {
  return values.map((v) => `<option value="${text(v)}"${v === selected ? " selected" : ""}>${text(v)}</option>`).join("");
}

function renderPanel() {
  const status = state.error ? `<p class="error" id="error">${text(state.error)}</p>` : "";
  const result = state.result ? `<div class="result" id="result">${state.result}</div>` : "";
  if (!state.signer) {
    document.getElementById("who").textContent = "no key";
    panel.innerHTML = `<h2>Your account</h2>
      <form id="import" autocomplete="off">
        <label>Account id <input id="account-id" name="account" placeholder="buyer-1" required spellcheck="false"></label>
        <label>Key (the 64 hex digits <code>crev registry keygen</code> wrote)
          <input id="seed" type="password" autocomplete="off" spellcheck="false" required></label>
        <button type="submit">Import key</button>
      </form>
      <p class="muted">The key stays in this tab's memory and is gone when you close it or press "Forget key". The server only ever receives messages signed with it.</p>
      ${status}`;
    document.getElementById("import").onsubmit = (e) => { e.preventDefault(); act(importKey); };
    return;
  }
  document.getElementById("who").textContent = state.account;
  const h = state.holdings || { grams: 0, lots: [] };
  const kinds = [...new Map(h.lots.map((l) => [l.place + "\u0000" + l.type, [l.place, l.type]])).values()];
  const byKind = new Map();
  for (const l of h.lots) byKind.set(l.place + "\u0000" + l.type, (byKind.get(l.place + "\u0000" + l.type) || 0) + l.grams);
  const expiry = `<select name="expires"><option value="">until cancelled</option><option value="3600">1 hour</option>
      <option value="86400">1 day</option><option value="604800">1 week</option></select>`;
  panel.innerHTML = `<h2>Account <span id="me">${text(state.account)}</span></h2>
    <p class="muted">Key ${C.bytesToHex(state.signer.kid)} (in memory only) <button id="forget">Forget key</button></p>
    ${status}${result}
    <h3>Holdings <span id="held" data-grams="${h.grams}">${kg(h.grams)} kg</span> <button id="refresh">Refresh</button></h3>
    <table id="holdings"><thead><tr><th>Lot</th><th>Type</th><th>Place</th><th>Slot</th><th>kg</th></tr></thead><tbody>
    ${h.lots.map((l) => `<tr><td>${text(l.lot)}</td><td>${text(l.type)}</td><td>${text(l.place)}</td><td>${slotAt(l.slot)}</td><td class="num">${kg(l.grams)}</td></tr>`).join("")
      || `<tr><td colspan="5" class="muted">No C-REV held.</td></tr>`}</tbody></table>

    <h3>Buy</h3>
    <form id="buy-form" class="order" autocomplete="off">
      <label>kg <input name="kg" placeholder="0.800" required></label>
      <label>at most (yen/kg) <input name="price" placeholder="20.00" required></label>
      <label>only from sellers <input name="sellers" placeholder="any (account ids, comma-separated)"></label>
      <label>only from places under <input name="places" placeholder="any (e.g. Japan/Osaka)"></label>
      <label>only of types under <input name="types" placeholder="any (e.g. solar)"></label>
      <label>good <span>${expiry}</span></label>
      <button type="submit">Sign and place buy</button>
    </form>

    <h3>Sell</h3>
    ${kinds.length ? `<form id="sell-form" class="order" autocomplete="off">
      <label>place and type <select name="kind">${kinds.map(([p, t], i) => `<option value="${i}">${text(p)} · ${text(t)} (${kg(byKind.get(p + "\u0000" + t))} kg)</option>`).join("")}</select></label>
      <label>kg <input name="kg" required></label>
      <label>at least (yen/kg) <input name="price" required></label>
      <label>good <span>${expiry}</span></label>
      <button type="submit">Sign and place sell</button>
    </form>` : `<p class="muted">Nothing to sell: this account holds no C-REV.</p>`}

    <h3>Retire</h3>
    <form id="retire-form" class="order" autocomplete="off">
      <label>kg <input name="kg" required></label>
      <label>beneficiary <input name="beneficiary" required maxlength="200"></label>
      <label>purpose <input name="purpose" required maxlength="200"></label>
      <label>reporting year <input name="year" inputmode="numeric" value="${new Date().getFullYear()}" required></label>
      <button type="submit">Sign and retire</button>
    </form>
    <p class="muted">A retirement takes the grams out of circulation for good, from your lots oldest slot first.</p>
    ${state.receipts.length ? `<h3>Your receipts</h3><ul id="my-receipts">${state.receipts.map((r) =>
      `<li><a href="#/receipt/${r.retirement}">Retirement #${r.retirement}</a>: ${kg(r.grams)} kg</li>`).join("")}</ul>` : ""}`;
  document.getElementById("forget").onclick = forget;
  document.getElementById("refresh").onclick = () => act(loadHoldings);
  document.getElementById("buy-form").onsubmit = (e) => { e.preventDefault(); const f = new FormData(e.target); act(() => buy(f)); };
  const sellForm = document.getElementById("sell-form");
  if (sellForm) sellForm.onsubmit = (e) => { e.preventDefault(); const f = new FormData(e.target); act(() => sell(f, kinds)); };
  document.getElementById("retire-form").onsubmit = (e) => { e.preventDefault(); const f = new FormData(e.target); act(() => retire(f)); };
}

function forget() {
  state.signer = null; state.account = null; state.holdings = null; state.mine = new Set();
  state.result = null; state.error = null; state.receipts = [];
  renderPanel();
  render();
}

async function importKey() {
  const accountInput = document.getElementById("account-id");
  const seedInput = document.getElementById("seed");
  const account = accountInput.value.trim();
  const seedHex = seedInput.value;
  seedInput.value = "";  // the key leaves the form at once
  if (!/^[a-z0-9][a-z0-9-]{2,62}$/.test(account)) throw new Error("an account id is 3..63 of a-z, 0-9 and -, such as buyer-1");
  const signer = await C.importSeed(seedHex);
  state.signer = signer;
  state.account = account;
  try {
    await loadHoldings();  // the server answers only a token signed by the account's own key
  } catch (err) {
    state.signer = null; state.account = null;
    throw err.status === 401 ? new Error("this is not the key of account " + account + ": " + err.message) : err;
  }
  state.result = null;
  return true;
}

function expiresFrom(form) {
  const span = form.get("expires");
  return span ? nowS() + Number(span) : null;
}

function placedHtml(what, placed) {
  const filled = placed.fills.reduce((n, f) => n + f.grams, 0);
  const fills = placed.fills.map((f) => `<li data-trade="${f.trade}">trade #${f.trade}: ${kg(f.grams)} kg at ${f.price_yen_per_kg} yen/kg
    (buy #${f.buy}, sell #${f.sell})</li>`).join("");
  return `<p id="placed" data-order="${placed.order}" data-filled="${filled}" data-left="${placed.grams_left}">
      ${what} #${placed.order} placed: ${placed.fills.length ? `filled ${kg(filled)} kg in ${placed.fills.length} trade${placed.fills.length > 1 ? "s" : ""}` : "no fill yet"};
      ${placed.grams_left ? kg(placed.grams_left) + " kg resting on the book" : "nothing left resting"}.</p>
    ${fills ? `<ul class="fills">${fills}</ul>` : ""}`;
}

async function place(fields, what) {
  const signed = await C.signMap(fields, state.signer);
  const placed = await postSigned("/orders", signed);
  state.mine.add(placed.order);
  state.result = placedHtml(what, placed);
  await loadHoldings();
}

async function buy(form) {
  const fields = { 0: 1, 1: 2, 2: state.account, 3: parseKg(form.get("kg")), 4: parsePrice(form.get("price")), 13: nowS(), 14: C.nonce() };
  const sellers = parseList(form.get("sellers")), places = parseList(form.get("places")), types = parseList(form.get("types"));
  if (sellers.length) fields[7] = sellers;  // an empty condition is left out, never written as []
  if (places.length) fields[8] = places;
  if (types.length) fields[9] = types;
  const expires = expiresFrom(form);
  if (expires !== null) fields[12] = expires;
  await place(fields, "Buy");
}

async function sell(form, kinds) {
  const [placePath, typePath] = kinds[Number(form.get("kind"))];
  const fields = { 0: 1, 1: 1, 2: state.account, 3: parseKg(form.get("kg")), 4: parsePrice(form.get("price")), 5: placePath, 6: typePath, 13: nowS(), 14: C.nonce() };
  const expires = expiresFrom(form);
  if (expires !== null) fields[12] = expires;
  await place(fields, "Sell");
}

async function cancel(order) {
  const signed = await C.signMap({ 0: 1, 1: 3, 2: state.account, 13: nowS(), 14: C.nonce(), 15: order }, state.signer);
  const placed = await postSigned("/orders", signed);
  state.result = `<p id="cancelled" data-order="${order}">Order #${order} cancelled (cancel #${placed.order}).</p>`;
  await loadHoldings();
}

async function retire(form) {
  const grams = parseKg(form.get("kg"));
  const year = Number(form.get("year"));
  const beneficiary = String(form.get("beneficiary")).trim(), purpose = String(form.get("purpose")).trim();
  if (!Number.isInteger(year) || year < 2000 || year > 2200) throw new Error("the reporting year is 2000..2200");
  if (!beneficiary || !purpose) throw new Error("name the beneficiary and the purpose");
  const held = await loadHoldings();  // fresh: the lots must still be held when the retirement arrives
  // The lots, oldest slot first, each [issuance leaf, lot index, grams].
  const lots = [];
  let left = grams;
  for (const lot of [...held.lots].sort((a, b) => a.slot - b.slot)) {
    if (left === 0) break;
    const take = Math.min(left, lot.grams);
    const [leaf, index] = lot.lot.split(".").map(Number);
    lots.push([leaf, index, take]);
    left -= take;
  }
  if (left > 0) throw new Error(`you hold ${kg(held.grams)} kg, less than the ${kg(grams)} kg to retire`);
  const fields = { 0: 1, 1: state.account, 2: grams, 3: lots, 4: beneficiary, 5: purpose, 6: year, 7: nowS(), 8: C.nonce() };
  const retired = await postSigned("/retirements", await C.signMap(fields, state.signer));
  state.receipts.push(retired);
  state.result = `<p id="retired" data-retirement="${retired.retirement}">Retired ${kg(retired.grams)} kg for good:
    <a id="receipt-link" href="#/receipt/${retired.retirement}">receipt #${retired.retirement}</a>.</p>`;
  await loadHoldings();
}

// Run one action of the account panel; show what it did or why it failed, then redraw.
async function act(action) {
  state.error = null;
  try {
    await action();
  } catch (err) {
    state.error = err.message || String(err);
  }
  renderPanel();
  await render();
}

// ------------------------------------------------------------------ routing

let rendering = false;
let again = false;
async function render() {
  if (rendering) { again = true; return; }
  rendering = true;
  try {
    do {
      again = false;
      const route = location.hash.replace(/^#/, "") || "/";
      const receipt = /^\/receipt(?:\/([0-9]+))?$/.exec(route);
      if (receipt) await receiptView(receipt[1] === undefined ? null : Number(receipt[1]));
      else await marketView();
      document.querySelectorAll("header nav a").forEach((a) => a.classList.toggle("here",
        receipt ? a.getAttribute("href") === "#/receipt" : a.getAttribute("href") === "#/"));
      document.body.dataset.rendered = String(Date.now());
    } while (again);
  } catch (err) {
    view.innerHTML = `<p class="error">Error: ${text(err.message)}</p>`;
  } finally {
    rendering = false;
  }
}

window.onhashchange = render;
renderPanel();
render();
// The book and the trades move with other participants' orders.
setInterval(() => { if (!document.hidden && !/^#\/receipt/.test(location.hash)) render(); }, 15000);
