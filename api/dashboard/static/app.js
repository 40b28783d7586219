// AdMetric's dashboard: plain JavaScript over the service's own JSON API,
// no libraries. The state lives in the URL's fragment, so a view can be
// bookmarked and the back button works; the admin token lives in this tab's
// session storage only.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const PAGE_SIZE = 20;
  const TOKEN_KEY = "admetric.adminToken";
  const READ_KEY = "admetric.readToken";
  const TIMEFRAMES = { "1h": 3600e3, "6h": 6 * 3600e3, "24h": 24 * 3600e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const browserTZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

  let state = readHash();
  let titles = new Map(); // ad ID → title, from GET /ads
  let titlesAt = 0;
  let lastOK = null; // when an answer last came back
  let lastSeries = null; // what the chart shows, redrawn on resize
  let timer = null;
  let inflight = null;
  let editing = null; // the ad the form edits, or null for a new one

  // ---- state in the fragment ----------------------------------------------

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    const s = { timeframe: "24h", from: null, to: null, tz: p.get("tz") || browserTZ, ad: p.get("ad") || null, offset: 0 };
    if (p.get("from") && p.get("to")) {
      s.timeframe = "custom";
      s.from = p.get("from");
      s.to = p.get("to");
    } else if (TIMEFRAMES[p.get("tf")]) {
      s.timeframe = p.get("tf");
    }
    const off = parseInt(p.get("offset") || "0", 10);
    s.offset = Number.isFinite(off) && off > 0 ? off : 0;
    return s;
  }

  function hashOf(s) {
    const p = new URLSearchParams();
    if (s.timeframe === "custom") {
      p.set("from", s.from);
      p.set("to", s.to);
    } else {
      p.set("tf", s.timeframe);
    }
    if (s.tz !== browserTZ) p.set("tz", s.tz);
    if (s.ad) p.set("ad", s.ad);
    if (s.offset) p.set("offset", String(s.offset));
    return "#" + p.toString();
  }

  function go(change) {
    const next = Object.assign({}, state, change);
    const h = hashOf(next);
    if (h === location.hash) {
      state = next;
      refresh();
    } else {
      location.hash = h; // hashchange refreshes
    }
  }

  // ---- the API ---------------------------------------------------------------

  class APIError extends Error {
    constructor(status, body) {
      const field = body && body.field ? body.field + ": " : "";
      super(field + ((body && body.error) || "HTTP " + status));
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const opts = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    // Reads go with the read token, else the admin token (which reads
    // everything); changes go with the admin token.
    const token = method === "GET" ? sessionStorage.getItem(READ_KEY) || sessionStorage.getItem(TOKEN_KEY) : sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const resp = await fetch(path, opts);
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        throw new APIError(resp.status, { error: "the answer is not JSON" });
      }
    }
    if (!resp.ok) throw new APIError(resp.status, data);
    return data;
  }

  function rangeParams() {
    const p = new URLSearchParams();
    if (state.timeframe === "custom") {
      p.set("from", state.from);
      p.set("to", state.to);
    } else {
      p.set("timeframe", state.timeframe);
    }
    p.set("tz", state.tz);
    if (state.ad) p.set("ad_id", state.ad);
    return p;
  }

  function spanMs() {
    if (state.timeframe !== "custom") return TIMEFRAMES[state.timeframe];
    return Date.parse(state.to) - Date.parse(state.from);
  }

  // intervals gives the series intervals to try, finest first: minute points
  // reach back only a few days, so a coarser one is the fallback.
  function intervals() {
    const span = spanMs();
    if (span <= 6 * 3600e3) return ["minute", "hour", "day"];
    if (span <= 8 * 86400e3) return ["hour", "day"];
    if (span <= 59 * 86400e3 && span <= 1440 * 3600e3) return ["day", "hour"];
    return ["day"];
  }

  async function seriesReport() {
    let last;
    for (const iv of intervals()) {
      const p = rangeParams();
      p.set("interval", iv);
      p.set("limit", "1");
      try {
        return await api("GET", "/ads/analytics?" + p);
      } catch (e) {
        last = e;
        if (!(e instanceof APIError) || e.status !== 400 || !/^interval/.test(e.message)) throw e;
      }
    }
    throw last;
  }

  async function tableReport() {
    const p = rangeParams();
    p.set("limit", String(PAGE_SIZE));
    p.set("offset", String(state.offset));
    return api("GET", "/ads/analytics?" + p);
  }

  async function loadTitles(force) {
    if (!force && Date.now() - titlesAt < 60000) return;
    const next = new Map();
    for (let offset = 0; ; ) {
      const page = await api("GET", "/ads?limit=500&offset=" + offset);
      for (const ad of page.ads) next.set(ad.id, ad.title);
      offset += page.ads.length;
      if (page.ads.length === 0 || offset >= page.total) break;
    }
    titles = next;
    titlesAt = Date.now();
  }

  // ---- refresh ---------------------------------------------------------------

  async function refresh() {
    clearTimeout(timer);
    const seq = {};
    inflight = seq;
    try {
      const wantTable = !state.ad;
      const [series, table] = await Promise.all([seriesReport(), wantTable ? tableReport() : null, loadTitles(false).catch(() => {})]);
      if (inflight !== seq) return; // a newer refresh began meanwhile
      lastOK = new Date();
      $("read-token-form").hidden = true;
      render(series, table);
      showNotice(series);
    } catch (e) {
      if (inflight !== seq) return;
      if (e instanceof APIError && e.status === 401) {
        sessionStorage.removeItem(READ_KEY);
        $("read-token-form").hidden = false;
        showNotice(null, "A read token is needed to see the figures.", false);
      } else if (e instanceof APIError && e.status >= 400 && e.status < 500) {
        showNotice(null, e.message, false);
      } else {
        showNotice(null, unreachableText(e), true);
      }
    } finally {
      // Waiting for a read token, the page does not ask again by itself.
      if (inflight === seq && $("read-token-form").hidden) timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function unreachableText(e) {
    const since = lastOK ? " Showing the numbers of " + timeText(lastOK) + "." : "";
    const why = e instanceof APIError ? " (" + e.message + ")" : "";
    return "AdMetric is unreachable" + why + "; retrying every " + REFRESH_MS / 1000 + " s." + since;
  }

  function showNotice(report, message, down) {
    const n = $("notice");
    let text = message || "";
    if (!text && report && report.stale) {
      text = "These numbers are stale: the live rollups are not answering";
      text += report.as_of ? ", and the figures are known complete only up to " + timeText(new Date(report.as_of)) + "." : ".";
    }
    n.textContent = text;
    n.hidden = !text;
    n.classList.toggle("down", !!down);
    if (report) {
      $("as-of").textContent = report.as_of ? "As of " + timeText(new Date(report.as_of)) : "Updated " + timeText(lastOK);
    }
  }

  // ---- rendering -------------------------------------------------------------

  const numFmt = new Intl.NumberFormat();
  const pctFmt = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 2 });
  const n = (v) => numFmt.format(v || 0);
  const pct = (v) => (v === null || v === undefined ? "–" : pctFmt.format(v));
  const secs = (v) => (v === null || v === undefined ? "–" : (Math.round(v * 10) / 10).toFixed(1) + " s");

  function timeText(d) {
    return new Intl.DateTimeFormat(undefined, { timeZone: state.tz, dateStyle: "medium", timeStyle: "medium" }).format(d);
  }

  function render(series, table) {
    const t = series.total;
    $("t-impressions").textContent = n(t.impressions);
    $("t-clicks").textContent = n(t.clicks);
    $("t-ctr").textContent = pct(t.ctr);
    $("t-unique_visitors").textContent = n(t.unique_visitors);
    $("t-completion_rate").textContent = pct(t.completion_rate);
    $("t-avg_playback_time").textContent = secs(t.avg_playback_time);
    $("t-ivt_rate").textContent = pct(t.ivt_rate || 0);

    const fmt = new Intl.DateTimeFormat(undefined, { timeZone: state.tz, dateStyle: "medium", timeStyle: "short" });
    $("view-sub").textContent = fmt.format(new Date(series.from)) + " – " + fmt.format(new Date(series.to)) + " (" + series.tz + ")";
    if (state.ad) {
      $("view-title").textContent = titles.get(state.ad) ? titles.get(state.ad) + " (" + state.ad + ")" : state.ad;
      renderFunnel(t);
    } else {
      $("view-title").textContent = "All ads";
    }
    $("back-link").hidden = !state.ad;
    $("funnel-panel").hidden = !state.ad;
    $("ads-panel").hidden = !!state.ad;
    lastSeries = series;
    renderChart(series);
    if (table) renderTable(table);
  }

  function renderTable(rep) {
    const body = document.querySelector("#ads-table tbody");
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.ad : null;
    const rows = rep.ads.map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.ad = m.ad_id;
      const td = document.createElement("td");
      const a = document.createElement("a");
      a.href = hashOf(Object.assign({}, state, { ad: m.ad_id, offset: 0 }));
      a.textContent = m.ad_id;
      a.dataset.ad = m.ad_id;
      td.append(a);
      const title = titles.get(m.ad_id);
      if (title) {
        const s = document.createElement("span");
        s.className = "title";
        s.textContent = title;
        td.append(s);
      }
      tr.append(td);
      for (const v of [n(m.impressions), n(m.clicks), pct(m.ctr), n(m.unique_visitors), pct(m.completion_rate), n(m.invalid)]) {
        const c = document.createElement("td");
        c.className = "num";
        c.textContent = v;
        tr.append(c);
      }
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 7;
      td.textContent = rep.total_ads === 0 ? "No ads yet: create one under Manage ads." : "No ads on this page.";
      tr.append(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    if (focused) {
      const again = body.querySelector('a[data-ad="' + CSS.escape(focused) + '"]');
      if (again) again.focus();
    }
    const first = rep.total_ads === 0 ? 0 : rep.offset + 1;
    const last = rep.offset + rep.ads.length;
    $("ads-range").textContent = rep.total_ads + " ads";
    $("page-info").textContent = first + "–" + last + " of " + rep.total_ads;
    $("page-prev").disabled = rep.offset === 0;
    $("page-next").disabled = last >= rep.total_ads;
  }

  function renderFunnel(t) {
    const steps = [
      ["Impressions", t.impressions],
      ["Starts", t.starts],
      ["First quartile", t.first_quartiles],
      ["Midpoint", t.midpoints],
      ["Third quartile", t.third_quartiles],
      ["Complete", t.completes],
      ["Clicks", t.clicks],
    ];
    const max = Math.max(1, ...steps.map((s) => s[1] || 0));
    const cells = [];
    for (const [label, v] of steps) {
      const l = document.createElement("span");
      l.textContent = label;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = ((100 * (v || 0)) / max).toFixed(2) + "%";
      const num = document.createElement("span");
      num.className = "n";
      num.textContent = n(v);
      cells.push(l, bar, num);
    }
    $("funnel").replaceChildren(...cells);
    const links = $("ad-links");
    const vast = document.createElement("a");
    vast.href = "/vast/" + encodeURIComponent(state.ad);
    vast.textContent = "VAST document";
    const edit = document.createElement("button");
    edit.type = "button";
    edit.textContent = "Edit this ad";
    edit.addEventListener("click", () => editAd(state.ad));
    links.replaceChildren(vast, " · ", edit);
  }

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // niceMax rounds v up to 1, 2 or 5 times a power of ten.
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function renderChart(rep) {
    const box = $("chart");
    const W = Math.max(280, box.clientWidth || 800);
    const H = W < 500 ? 200 : 260;
    const m = { l: 48, r: 40, t: 12, b: 26 };
    const iw = W - m.l - m.r;
    const ih = H - m.t - m.b;
    // Points narrower than 4 px are added up in runs of k, so that a phone
    // shows 6 hours of minutes as readable bars.
    const series = rep.total.series || [];
    const k = Math.max(1, Math.ceil(series.length / Math.floor(iw / 4)));
    const pts = [];
    for (let i = 0; i < series.length; i += k) {
      const run = series.slice(i, i + k);
      pts.push({ t: Date.parse(run[0].from), imp: run.reduce((a, p) => a + p.impressions, 0), clk: run.reduce((a, p) => a + p.clicks, 0) });
    }
    const per = k === 1 ? rep.interval : k + " " + rep.interval + "s";
    const svg = el("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H });
    svg.append(el("title", {}, "Impressions and clicks per " + per));
    if (pts.length === 0) {
      svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No data"));
      box.replaceChildren(svg);
      return;
    }
    const maxImp = niceMax(Math.max(...pts.map((p) => p.imp)));
    const maxClk = niceMax(Math.max(...pts.map((p) => p.clk)));
    const step = iw / pts.length;
    const x = (i) => m.l + step * (i + 0.5);
    const yImp = (v) => m.t + ih - (ih * v) / maxImp;
    const yClk = (v) => m.t + ih - (ih * v) / maxClk;

    for (const f of [0, 0.5, 1]) {
      const y = m.t + ih - ih * f;
      svg.append(el("line", { x1: m.l, x2: W - m.r, y1: y, y2: y, class: "axis" }));
      svg.append(el("text", { x: m.l - 6, y: y + 4, "text-anchor": "end", class: "tick" }, compact(maxImp * f)));
      svg.append(el("text", { x: W - m.r + 6, y: y + 4, "text-anchor": "start", class: "tick" }, compact(maxClk * f)));
    }
    const bw = Math.max(1, step * 0.6);
    pts.forEach((p, i) => {
      if (p.clk > 0) {
        const y = yClk(p.clk);
        svg.append(el("rect", { x: x(i) - bw / 2, y: y, width: bw, height: m.t + ih - y, class: "bar-clk" }));
      }
    });
    const line = pts.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + yImp(p.imp).toFixed(1)).join(" ");
    const area = line + " L" + x(pts.length - 1).toFixed(1) + " " + (m.t + ih) + " L" + x(0).toFixed(1) + " " + (m.t + ih) + " Z";
    svg.append(el("path", { d: area, class: "area-imp" }));
    svg.append(el("path", { d: line, class: "line-imp" }));

    const fmt = tickFormat(rep.interval);
    const labels = Math.max(2, Math.min(6, Math.floor(iw / 110)));
    for (let k = 0; k < labels; k++) {
      const i = Math.round((k * (pts.length - 1)) / (labels - 1));
      svg.append(el("text", { x: x(i), y: H - 6, "text-anchor": k === 0 ? "start" : k === labels - 1 ? "end" : "middle", class: "tick" }, fmt.format(new Date(pts[i].t))));
    }
    box.setAttribute("aria-label", "Impressions (line, left axis) and clicks (bars, right axis) per " + per + ": " + n(rep.total.impressions) + " impressions, " + n(rep.total.clicks) + " clicks in all");
    box.replaceChildren(svg);
  }

  function tickFormat(interval) {
    const o = { timeZone: state.tz };
    if (interval === "day") Object.assign(o, { month: "short", day: "numeric" });
    else if (interval === "hour" && spanMs() > 36 * 3600e3) Object.assign(o, { month: "short", day: "numeric", hour: "2-digit" });
    else Object.assign(o, { hour: "2-digit", minute: "2-digit" });
    return new Intl.DateTimeFormat(undefined, o);
  }

  function compact(v) {
    return new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 }).format(v);
  }

  // ---- controls --------------------------------------------------------------

  function syncControls() {
    for (const b of document.querySelectorAll("[data-timeframe]")) {
      b.setAttribute("aria-pressed", String(b.dataset.timeframe === state.timeframe));
    }
    $("custom-range").hidden = state.timeframe !== "custom";
    if (state.timeframe === "custom") {
      $("custom-from").value = toLocalInput(state.from);
      $("custom-to").value = toLocalInput(state.to);
    }
    $("tz").value = state.tz;
  }

  // offsetMs is how far tz's wall clock is ahead of UTC at instant ms.
  function offsetMs(ms, tz) {
    const parts = {};
    for (const p of new Intl.DateTimeFormat("en-US", { timeZone: tz, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }).formatToParts(new Date(ms))) {
      parts[p.type] = p.value;
    }
    const wall = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
    return wall - Math.floor(ms / 1000) * 1000;
  }

  // fromLocalInput reads a datetime-local value as wall time in the chosen zone.
  function fromLocalInput(v) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(v);
    if (!m) return null;
    const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5]);
    let t = wall - offsetMs(wall, state.tz);
    t = wall - offsetMs(t, state.tz);
    return new Date(t).toISOString().replace(/\.000Z$/, "Z");
  }

  function toLocalInput(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return "";
    return new Date(t + offsetMs(t, state.tz)).toISOString().slice(0, 16);
  }

  function fillTimeZones() {
    const sel = $("tz");
    let zones = ["UTC"];
    try {
      zones = zones.concat(Intl.supportedValuesOf("timeZone"));
    } catch (e) {
      zones.push(browserTZ);
    }
    if (!zones.includes(state.tz)) zones.push(state.tz);
    const seen = new Set();
    sel.replaceChildren(
      ...zones.filter((z) => !seen.has(z) && seen.add(z)).map((z) => {
        const o = document.createElement("option");
        o.value = z;
        o.textContent = z.replace(/_/g, " ");
        return o;
      })
    );
  }

  function wire() {
    for (const b of document.querySelectorAll("[data-timeframe]")) {
      b.addEventListener("click", () => {
        const tf = b.dataset.timeframe;
        if (tf === "custom") {
          const to = new Date();
          to.setSeconds(0, 0);
          const from = new Date(to.getTime() - 3 * 3600e3);
          const iso = (d) => d.toISOString().replace(/\.000Z$/, "Z");
          go({ timeframe: "custom", from: state.from || iso(from), to: state.to || iso(to), offset: 0 });
          setTimeout(() => $("custom-from").focus(), 0);
        } else {
          go({ timeframe: tf, from: null, to: null, offset: 0 });
        }
      });
    }
    $("custom-range").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const from = fromLocalInput($("custom-from").value);
      const to = fromLocalInput($("custom-to").value);
      if (!from || !to || Date.parse(to) <= Date.parse(from)) {
        $("custom-error").textContent = "Give a start before the end.";
        return;
      }
      $("custom-error").textContent = "";
      go({ timeframe: "custom", from, to, offset: 0 });
    });
    $("tz").addEventListener("change", () => go({ tz: $("tz").value }));
    $("read-token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(READ_KEY, $("read-token").value);
      $("read-token").value = "";
      titlesAt = 0;
      refresh();
    });
    $("page-prev").addEventListener("click", () => go({ offset: Math.max(0, state.offset - PAGE_SIZE) }));
    $("page-next").addEventListener("click", () => go({ offset: state.offset + PAGE_SIZE }));
    $("ads-table").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr[data-ad]");
      if (tr && !ev.target.closest("a")) go({ ad: tr.dataset.ad, offset: 0 });
    });
    $("home-link").addEventListener("click", (ev) => {
      ev.preventDefault();
      go({ ad: null, offset: 0 });
    });
    $("back-link").addEventListener("click", (ev) => {
      ev.preventDefault();
      go({ ad: null, offset: 0 });
    });
    window.addEventListener("hashchange", () => {
      state = readHash();
      syncControls();
      refresh();
    });
    // The chart is drawn for its box's width: drawn again when that changes
    // (a turned phone, a resized window), once the change settles.
    let resizeTimer = null;
    let drawnWidth = 0;
    new ResizeObserver((entries) => {
      const w = Math.round(entries[0].contentRect.width);
      if (w === drawnWidth) return;
      drawnWidth = w;
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => lastSeries && renderChart(lastSeries), 100);
    }).observe($("chart"));
    wireManagement();
  }

  // ---- ad management ---------------------------------------------------------

  const FORM_FIELDS = ["id", "title", "advertiser", "video_url", "click_url", "duration_seconds", "vast_tag_url"];

  function wireManagement() {
    const toggle = $("manage-toggle");
    toggle.addEventListener("click", () => showManage($("manage").hidden));
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("admin-token").value);
      $("admin-token").value = "";
      tokenState();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      tokenState();
    });
    $("ad-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      await saveAd();
    });
    $("ad-cancel").addEventListener("click", () => resetForm());
    // Delete asks twice, in the page: the first press arms the button for
    // a few seconds, the second deletes.
    const del = $("ad-delete");
    let disarm = null;
    del.addEventListener("click", async () => {
      if (!editing) return;
      if (del.dataset.armed !== "1") {
        del.dataset.armed = "1";
        del.textContent = "Really delete " + editing + "?";
        $("ad-form-done").textContent = "It will no longer be served or listed; its events stay in the archive.";
        disarm = setTimeout(() => disarmDelete(), 5000);
        return;
      }
      clearTimeout(disarm);
      disarmDelete();
      const was = editing;
      // Leave the ad's own view first: its figures are not found once it is gone.
      if (state.ad === was) go({ ad: null, offset: 0 });
      if (await adCall("DELETE", "/ads/" + encodeURIComponent(was), undefined, "Deleted " + was + ".")) resetForm();
    });
    tokenState();
  }

  function showManage(open) {
    $("manage").hidden = !open;
    $("manage-toggle").setAttribute("aria-expanded", String(open));
    if (open) $("manage").scrollIntoView({ block: "nearest" });
  }

  function tokenState() {
    $("token-state").textContent = sessionStorage.getItem(TOKEN_KEY) ? "A token is set for this tab." : "No token set.";
  }

  function disarmDelete() {
    const del = $("ad-delete");
    delete del.dataset.armed;
    del.textContent = "Delete";
  }

  function resetForm() {
    editing = null;
    $("ad-form").reset();
    $("f-id").disabled = false;
    $("ad-form-legend").textContent = "New ad";
    $("ad-save").textContent = "Create";
    $("ad-cancel").hidden = true;
    $("ad-delete").hidden = true;
    disarmDelete();
    $("ad-form-error").textContent = "";
  }

  async function editAd(id) {
    showManage(true);
    $("ad-form-done").textContent = "";
    try {
      const ad = await api("GET", "/ads/" + encodeURIComponent(id));
      resetForm();
      editing = id;
      for (const f of FORM_FIELDS) $("f-" + f).value = ad[f] === undefined || ad[f] === null ? "" : ad[f];
      $("f-id").disabled = true;
      $("ad-form-legend").textContent = "Edit " + id;
      $("ad-save").textContent = "Save";
      $("ad-cancel").hidden = false;
      $("ad-delete").hidden = false;
      $("f-title").focus();
    } catch (e) {
      $("ad-form-error").textContent = e.message;
    }
  }

  async function saveAd() {
    const body = {};
    for (const f of FORM_FIELDS) {
      const v = $("f-" + f).value.trim();
      if (f === "duration_seconds") {
        if (v !== "") body[f] = Number(v);
      } else if (f !== "id" || !editing) {
        body[f] = v;
      }
    }
    if (editing) {
      await adCall("PUT", "/ads/" + encodeURIComponent(editing), body, "Saved " + editing + ".");
    } else if (await adCall("POST", "/ads", body, "Created " + body.id + ".")) {
      resetForm();
    }
  }

  async function adCall(method, path, body, done) {
    $("ad-form-error").textContent = "";
    $("ad-form-done").textContent = "";
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      $("ad-form-error").textContent = "Enter the admin token first.";
      $("admin-token").focus();
      return false;
    }
    try {
      await api(method, path, body);
      $("ad-form-done").textContent = done;
      await loadTitles(true).catch(() => {});
      refresh();
      return true;
    } catch (e) {
      $("ad-form-error").textContent = e.status === 401 ? "The admin token was refused." : e.message;
      return false;
    }
  }

  // ---- start -----------------------------------------------------------------

  fillTimeZones();
  syncControls();
  wire();
  refresh();
})();
