// The dashboard page. It uses only the JSON API under /api/v1 (see
// /api/v1/openapi.json) and redraws the current view whenever the server's
// event stream says something changed.
"use strict";

const view = document.getElementById("view");
const state = { page: 1, size: 50, sort: "dev", order: "asc", q: "", status: "", lang: "en" };

async function api(path) {
  const response = await fetch("/api/v1" + path, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/login"; throw new Error("not signed in"); }
  if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
  return response.json();
}

function text(value) {
  const span = document.createElement("span");
  span.textContent = String(value);
  return span.innerHTML;
}

// C-REV comes in whole grams (SPEC §8); shown as kg with 3 decimals, exactly.
function kg(grams) {
  return Math.floor(grams / 1000) + "." + String(grams % 1000).padStart(3, "0");
}

function age(seconds) {
  if (seconds === null) return "—";
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  return Math.round(seconds / 3600) + " h";
}

async function fleetView() {
  const params = new URLSearchParams({ page: state.page, page_size: state.size, sort: state.sort, order: state.order, q: state.q });
  if (state.status) params.set("status", state.status);
  const data = await api("/fleet?" + params);
  dropCharts();
  const s = data.summary;
  const pages = Math.max(1, Math.ceil(data.total / data.page_size));
  const head = (key, label) => `<th data-sort="${key}">${label}${state.sort === key ? (state.order === "asc" ? " ▲" : " ▼") : ""}</th>`;
  view.innerHTML = `
    <div class="cards">
      <div class="card">Devices<b id="devices">${s.devices}</b></div>
      <div class="card">Online<b id="online">${s.online}</b></div>
      <div class="card">Offline<b id="offline">${s.offline}</b></div>
      <div class="card">Self-consumption today<b>${s.today_self_kwh.toFixed(3)} kWh</b></div>
      <div class="card">CO2 avoided today<b>${s.today_co2_kg.toFixed(3)} kg</b></div>
      <div class="card">Quarantined<b id="quarantined">${s.quarantined}</b></div>
    </div>
    <div class="controls">
      <input id="search" placeholder="filter by device or site" value="${text(state.q)}">
      <select id="status"><option value="">any status</option><option>online</option><option>offline</option><option>unknown</option></select>
      <button id="prev" ${state.page <= 1 ? "disabled" : ""}>‹</button>
      <span>page ${data.page} of ${pages} (${data.total} devices)</span>
      <button id="next" ${state.page >= pages ? "disabled" : ""}>›</button>
    </div>
    <table id="fleet"><thead><tr>${head("dev", "Device")}${head("site", "Site")}${head("status", "Status")}
      ${head("last_reading", "Last reading")}${head("today_self", "Self today (kWh)")}<th>CO2 today (kg)</th><th>C-REV today (kg)</th>${head("quarantined", "Quarantined")}</tr></thead>
    <tbody>${data.items.map((d) => `<tr data-dev="${text(d.dev)}">
      <td>${text(d.dev)}</td><td><a href="#/site/${encodeURIComponent(d.site)}">${text(d.site)}</a></td>
      <td class="${text(d.status)}">${text(d.status)}</td><td>${age(d.last_reading_age_s)}</td>
      <td class="num">${d.today_self_kwh.toFixed(3)}</td><td class="num">${d.today_co2_kg.toFixed(3)}</td>
      <td class="num">${kg(d.crev_issued_today_g)}</td><td class="num">${d.quarantined}</td></tr>`).join("")}</tbody></table>`;
  document.getElementById("status").value = state.status;
  view.querySelectorAll("th[data-sort]").forEach((th) => th.onclick = () => {
    const key = th.dataset.sort;
    state.order = state.sort === key && state.order === "asc" ? "desc" : "asc";
    state.sort = key; state.page = 1; render();
  });
  document.getElementById("search").onchange = (e) => { state.q = e.target.value; state.page = 1; render(); };
  document.getElementById("status").onchange = (e) => { state.status = e.target.value; state.page = 1; render(); };
  document.getElementById("prev").onclick = () => { state.page -= 1; render(); };
  document.getElementById("next").onclick = () => { state.page += 1; render(); };
}

// The site's charts. uPlot (from npm; `make vendor` copies it into
// static/vendor) draws them with time axes and units. Without it, as in a
// wheel built without npm, the plain SVG charts below stand in.
const POWER = { id: "chart-power", unit: "kW", series: [
  ["gen_w", "Generation", "#e0a800"], ["self_w", "Self-consumption", "#157a3b"], ["demand_w", "Demand", "#1f5fa8"]],
  scale: 1 / 1000 };  // the API gives W; shown as kW
const ENERGY = { id: "chart-energy", unit: "kWh", series: [
  ["gen_kwh", "Generation", "#e0a800"], ["self_kwh", "Self-consumption", "#157a3b"], ["import_kwh", "Import", "#b3261e"],
  ["export_kwh", "Export", "#8e44ad"], ["demand_kwh", "Demand", "#1f5fa8"]], scale: 1 };
let charts = [];
let warnedNoUplot = false;

function haveUplot() {
  if (typeof window.uPlot === "function") return true;
  if (!warnedNoUplot) {
    warnedNoUplot = true;
    console.warn("crev: uPlot is not installed (/static/vendor/uPlot.iife.min.js; run `make vendor`); drawing plain SVG charts");
  }
  return false;
}

function locale() { return state.lang === "ja" ? "ja-JP" : "en-GB"; }

function timeLabels(splits) {
  // Local time, 24-hour; the date under the first tick and under each midnight.
  const time = new Intl.DateTimeFormat(locale(), { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  const date = new Intl.DateTimeFormat(locale(), { month: "short", day: "numeric" });
  return splits.map((t, i) => {
    const d = new Date(t * 1000);
    const midnight = d.getHours() === 0 && d.getMinutes() === 0;
    return time.format(d) + (i === 0 || midnight ? "\n" + date.format(d) : "");
  });
}

function uplotChart(spec, slots, window24) {
  const fmt = (v) => v === null || v === undefined ? "—" : v.toFixed(3) + " " + spec.unit;
  const when = new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "short", hourCycle: "h23" });
  const data = [slots.map((s) => s.t), ...spec.series.map(([key]) => slots.map((s) => s[key] * spec.scale))];
  const el = document.getElementById(spec.id);
  const options = {
    width: Math.max(320, Math.min(960, view.clientWidth - 16)),
    height: 260,
    scales: {
      // The last 24 hours (and any slot outside them), whatever uPlot would
      // pick: for a single point it would widen the axis to months.
      x: { time: true, range: () => window24 },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      { values: (u, splits) => timeLabels(splits), size: 50 },
      { label: spec.unit, values: (u, splits) => splits.map((v) => +v.toFixed(3)), size: 60 },
    ],
    series: [
      { label: "Time", value: (u, t) => t === null ? "—" : when.format(new Date(t * 1000)) },
      ...spec.series.map(([key, label, color]) => ({
        label, stroke: color, width: 2, value: (u, v) => fmt(v),
        // uPlot draws no line through a single point; the points keep one slot visible.
        points: { show: true, size: 6, stroke: color, fill: color },
      })),
    ],
  };
  const chart = new window.uPlot(options, data, el);
  el.dataset.slots = String(slots.length);
  el.dataset.renderer = "uplot";
  el.uplot = chart;  // for the browser test
  charts.push(chart);
}

function svgChart(spec, slots, window24) {
  const width = 860, height = 260, pad = 40;
  const keys = spec.series;
  const [t0, t1] = window24;
  const top = Math.max(1e-9, ...slots.flatMap((s) => keys.map(([k]) => s[k] * spec.scale)));
  const x = (t) => pad + (width - 2 * pad) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => height - pad - (height - 2 * pad) * v / top;
  const lines = keys.map(([key, , color]) => `<polyline class="series-${key}" fill="none" stroke="${color}" stroke-width="2"
      points="${slots.map((s) => x(s.t).toFixed(1) + "," + y(s[key] * spec.scale).toFixed(1)).join(" ")}"/>` +
      slots.map((s) => `<circle cx="${x(s.t).toFixed(1)}" cy="${y(s[key] * spec.scale).toFixed(1)}" r="3" fill="${color}"/>`).join("")).join("");
  const el = document.getElementById(spec.id);
  el.dataset.slots = String(slots.length);
  el.dataset.renderer = "svg";
  el.innerHTML = `<svg class="chart" width="${width}" height="${height}" data-slots="${slots.length}">
    <line x1="${pad}" y1="${height - pad}" x2="${width - pad}" y2="${height - pad}" stroke="#999"/>
    <text x="4" y="${pad - 8}" font-size="12">${top.toFixed(3)} ${spec.unit}</text>${lines}</svg>
    <div class="legend">${keys.map(([, label, c]) => `<span style="color:${c}">■ ${label}</span>`).join("")}</div>`;
}

function drawCharts(slots) {
  const now = Date.now() / 1000;
  const times = slots.map((s) => s.t);
  const window24 = [Math.min(...times, now - 86400), Math.max(...times, now)];
  const draw = haveUplot() ? uplotChart : svgChart;
  for (const spec of [POWER, ENERGY]) draw(spec, slots, window24);
}

function dropCharts() {
  for (const chart of charts) chart.destroy();
  charts = [];
}

// The smart meter beside each grid meter (SPEC §13): every reconciled slot, mismatches first,
// newest first. The verdict is written out in words, not shown by colour alone. A site whose
// devices have no smart meter has no verdicts, and no panel.
function kwh(mwh) { return mwh === null ? "—" : (mwh / 1e6).toFixed(3); }

function smartMeterPanel(data) {
  if (data.devices.length === 0) return "";
  const rank = (s) => s.verdict === "SMART_METER_MISMATCH" ? 0 : 1;
  const rows = data.devices.flatMap((d) => d.slots.map((s) => ({ dev: d.dev, ...s })))
    .sort((a, b) => rank(a) - rank(b) || b.slot_t0 - a.slot_t0 || (a.dev < b.dev ? -1 : 1));
  const when = (t) => `<time datetime="${new Date(t * 1000).toISOString()}">${new Date(t * 1000).toLocaleString(locale())}</time>`;
  const release = (s) => s.released ? `released: ${text(s.release_reason)}`
    : s.verdict === "SMART_METER_MISMATCH" ? "held until released" : "—";
  const c = data.counts;
  return `<h3>Smart meter</h3>
    <p id="smart-meter-counts">Over all reconciled slots: ${c.SMART_METER_MISMATCH} mismatched (${data.held} held until released),
      ${c.OK} OK, ${c.UNCHECKED} unchecked.</p>
    <table id="reconciliation"><caption>Each 30-minute slot's grid meter against the utility smart meter, mismatches first
      (the newest ${data.limit} slots of each device); energies in kWh</caption>
    <thead><tr><th scope="col">Slot start</th><th scope="col">Device</th><th scope="col">Verdict</th>
      <th scope="col">Grid import</th><th scope="col">Smart meter import</th><th scope="col">Grid export</th>
      <th scope="col">Smart meter export</th><th scope="col">Tolerance (import / export)</th>
      <th scope="col">Release</th><th scope="col">Detail</th></tr></thead>
    <tbody>${rows.map((s) => `<tr data-dev="${text(s.dev)}" data-slot="${s.slot_t0}" data-verdict="${text(s.verdict)}">
      <td>${when(s.slot_t0)}</td><td>${text(s.dev)}</td><td class="verdict-${text(s.verdict)}">${text(s.verdict)}</td>
      <td class="num">${kwh(s.grid_import_mwh)}</td><td class="num">${kwh(s.sm_import_mwh)}</td>
      <td class="num">${kwh(s.grid_export_mwh)}</td><td class="num">${kwh(s.sm_export_mwh)}</td>
      <td class="num">${kwh(s.tolerance_import_mwh)} / ${kwh(s.tolerance_export_mwh)}</td>
      <td>${release(s)}</td><td>${text(s.detail)}</td></tr>`).join("")}</tbody></table>`;
}

async function siteView(site) {
  const [info, slots, consumer, reconciliation] = await Promise.all([
    api("/sites/" + encodeURIComponent(site)),
    api("/sites/" + encodeURIComponent(site) + "/series?hours=24&slot_s=1800"),
    api("/sites/" + encodeURIComponent(site) + "/consumer?lang=" + state.lang),
    api("/sites/" + encodeURIComponent(site) + "/reconciliation?limit=48"),
  ]);
  const ratio = info.renewable_ratio === null ? "—" : (info.renewable_ratio * 100).toFixed(1) + " %";
  const to = Math.floor(Date.now() / 1000), from = to - 86400;
  dropCharts();
  view.innerHTML = `
    <h2>Site ${text(info.site)}</h2>
    <div class="cards">
      <div class="card">Renewable ratio (24 h)<b id="ratio">${ratio}</b></div>
      <div class="card">CO2 avoided (24 h)<b>${info.co2_avoided_kg.toFixed(3)} kg</b></div>
      <div class="card">Emission factor<b>${info.factor_g_per_kwh} g/kWh</b></div>
      <div class="card">C-REV issued today<b id="crev-today">${kg(info.crev_issued_today_g)} kg</b></div>
      <div class="card">C-REV issued in all<b id="crev-issued">${kg(info.crev_issued_total_g)} kg</b></div>
      <div class="card">C-REV retired in all<b id="crev-retired">${kg(info.crev_retired_total_g)} kg</b></div>
      <div class="card">Open gaps<b>${info.gaps.length}</b></div>
      <div class="card">Flags today<b id="flags">${info.flags_today.length ? info.flags_today.map(text).join(", ") : "none"}</b></div>
    </div>
    ${info.gaps.length ? `<p>Missing: ${info.gaps.map((g) => `${text(g.dev)} seq ${g.first_seq}–${g.last_seq}`).join("; ")}</p>` : ""}
    <h3>Power, 30-minute averages (kW)</h3><div class="chart" id="chart-power"></div>
    <h3>Energy per 30 minutes (kWh)</h3><div class="chart" id="chart-energy"></div>
    <h3>Devices</h3>
    <table><thead><tr><th>Device</th><th>Status</th><th>Last reading</th><th>Quarantined</th><th>Evidence (24 h)</th></tr></thead><tbody>
    ${info.devices.map((d) => `<tr><td>${text(d.dev)}</td><td class="${text(d.status)}">${text(d.status)}</td><td>${age(d.last_reading_age_s)}</td>
      <td class="num">${d.quarantined}</td><td><a href="/api/v1/export?device=${encodeURIComponent(d.dev)}&from=${from}&to=${to}">bundle</a></td></tr>`).join("")}</tbody></table>
    ${smartMeterPanel(reconciliation)}
    <h3>For the consumer <button id="lang">${state.lang === "en" ? "日本語" : "English"}</button></h3>
    <div class="consumer" id="consumer" lang="${consumer.lang}">${text(consumer.summary)}</div>`;
  drawCharts(slots);
  document.getElementById("lang").onclick = () => { state.lang = state.lang === "en" ? "ja" : "en"; render(); };
}

async function quarantineView() {
  const data = await api("/quarantine");
  dropCharts();
  view.innerHTML = `<h2>Quarantine</h2><p>${data.total} messages kept with their reason.</p>
    <table id="quarantine"><thead><tr><th>Reason</th><th>Count</th></tr></thead><tbody>
    ${Object.entries(data.counts).map(([r, n]) => `<tr><td>${text(r)}</td><td class="num" data-reason="${text(r)}">${n}</td></tr>`).join("")}</tbody></table>`;
}

// The witnesses (SPEC §11): what each cosigned last, and whether ingest reaches it.
// Status is written out in words, not shown by colour alone.
async function witnessesView() {
  const data = await api("/witnesses");
  dropCharts();
  const when = (seconds) => seconds === null ? "—"
    : `<time datetime="${new Date(seconds * 1000).toISOString()}">${new Date(seconds * 1000).toLocaleString(locale())}</time>`;
  const status = (w) => w.status === "retrying" ? `retrying: ${text(w.error)}` : text(w.status);
  view.innerHTML = `<h2>Witnesses</h2>
    <p>The ledger's newest block: ${data.ledger_height === null ? "none yet" : `height ${data.ledger_height}, tree size ${data.ledger_size}`}.</p>
    ${data.witnesses.length === 0 ? "<p>No witness is configured ([[witness]] in ingest.toml).</p>" : `
    <table id="witnesses"><caption>Each witness's newest cosignature, and ingest's last exchange with it</caption>
    <thead><tr><th scope="col">Witness</th><th scope="col">URL</th><th scope="col">Cosigned size</th><th scope="col">Behind (leaves)</th>
      <th scope="col">Cosigned at</th><th scope="col">Last exchange</th><th scope="col">Status</th></tr></thead>
    <tbody>${data.witnesses.map((w) => `<tr data-witness="${text(w.witness)}">
      <td>${text(w.witness)}</td><td>${w.url === null ? "not configured" : text(w.url)}</td>
      <td class="num">${w.cosigned_size}</td><td class="num">${w.behind}</td><td>${when(w.cosigned_at)}</td>
      <td>${when(w.checked_ms === null ? null : Math.floor(w.checked_ms / 1000))}</td>
      <td class="witness-${w.status.replace(" ", "-")}" data-status="${text(w.status)}">${status(w)}</td></tr>`).join("")}</tbody></table>`}`;
}

let rendering = false;
async function render() {
  if (rendering) return;
  rendering = true;
  try {
    const route = location.hash.replace(/^#/, "") || "/";
    if (route.startsWith("/site/")) await siteView(decodeURIComponent(route.slice(6)));
    else if (route === "/quarantine") await quarantineView();
    else if (route === "/witnesses") await witnessesView();
    else await fleetView();
    document.body.dataset.rendered = String(Date.now());
  } catch (err) {
    view.textContent = "Error: " + err.message;
  } finally {
    rendering = false;
  }
}

window.onhashchange = render;
const events = new EventSource("/api/v1/events");
events.addEventListener("update", () => { document.getElementById("live").style.color = "#7CFC00"; render(); });
events.onerror = () => { document.getElementById("live").style.color = "#b3261e"; };
render();
