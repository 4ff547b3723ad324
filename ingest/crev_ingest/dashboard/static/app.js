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

function chart(slots, keys, unit) {
  const width = 860, height = 260, pad = 40;
  const times = slots.map((s) => s.t);
  const t0 = Math.min(...times, Date.now() / 1000 - 86400), t1 = Math.max(...times, Date.now() / 1000);
  const top = Math.max(1e-9, ...slots.flatMap((s) => keys.map(([k]) => s[k])));
  const x = (t) => pad + (width - 2 * pad) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => height - pad - (height - 2 * pad) * v / top;
  const lines = keys.map(([key, color]) => `<polyline class="series-${key}" fill="none" stroke="${color}" stroke-width="2"
      points="${slots.map((s) => x(s.t).toFixed(1) + "," + y(s[key]).toFixed(1)).join(" ")}"/>`).join("");
  return `<svg class="chart" width="${width}" height="${height}" data-slots="${slots.length}">
    <line x1="${pad}" y1="${height - pad}" x2="${width - pad}" y2="${height - pad}" stroke="#999"/>
    <text x="4" y="${pad - 8}" font-size="12">${top.toFixed(3)} ${unit}</text>${lines}</svg>
    <div class="legend">${keys.map(([k, c]) => `<span style="color:${c}">■ ${k}</span>`).join("")}</div>`;
}

async function siteView(site) {
  const [info, slots, consumer] = await Promise.all([
    api("/sites/" + encodeURIComponent(site)),
    api("/sites/" + encodeURIComponent(site) + "/series?hours=24&slot_s=1800"),
    api("/sites/" + encodeURIComponent(site) + "/consumer?lang=" + state.lang),
  ]);
  const ratio = info.renewable_ratio === null ? "—" : (info.renewable_ratio * 100).toFixed(1) + " %";
  const to = Math.floor(Date.now() / 1000), from = to - 86400;
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
    <h3>Power, 30-minute averages (W)</h3>${chart(slots, [["gen_w", "#e0a800"], ["self_w", "#157a3b"], ["demand_w", "#1f5fa8"]], "W")}
    <h3>Energy per 30 minutes (kWh)</h3>${chart(slots, [["gen_kwh", "#e0a800"], ["self_kwh", "#157a3b"], ["import_kwh", "#b3261e"], ["export_kwh", "#8e44ad"], ["demand_kwh", "#1f5fa8"]], "kWh")}
    <h3>Devices</h3>
    <table><thead><tr><th>Device</th><th>Status</th><th>Last reading</th><th>Quarantined</th><th>Evidence (24 h)</th></tr></thead><tbody>
    ${info.devices.map((d) => `<tr><td>${text(d.dev)}</td><td class="${text(d.status)}">${text(d.status)}</td><td>${age(d.last_reading_age_s)}</td>
      <td class="num">${d.quarantined}</td><td><a href="/api/v1/export?device=${encodeURIComponent(d.dev)}&from=${from}&to=${to}">bundle</a></td></tr>`).join("")}</tbody></table>
    <h3>For the consumer <button id="lang">${state.lang === "en" ? "日本語" : "English"}</button></h3>
    <div class="consumer" id="consumer" lang="${consumer.lang}">${text(consumer.summary)}</div>`;
  document.getElementById("lang").onclick = () => { state.lang = state.lang === "en" ? "ja" : "en"; render(); };
}

async function quarantineView() {
  const data = await api("/quarantine");
  view.innerHTML = `<h2>Quarantine</h2><p>${data.total} messages kept with their reason.</p>
    <table id="quarantine"><thead><tr><th>Reason</th><th>Count</th></tr></thead><tbody>
    ${Object.entries(data.counts).map(([r, n]) => `<tr><td>${text(r)}</td><td class="num" data-reason="${text(r)}">${n}</td></tr>`).join("")}</tbody></table>`;
}

let rendering = false;
async function render() {
  if (rendering) return;
  rendering = true;
  try {
    const route = location.hash.replace(/^#/, "") || "/";
    if (route.startsWith("/site/")) await siteView(decodeURIComponent(route.slice(6)));
    else if (route === "/quarantine") await quarantineView();
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
