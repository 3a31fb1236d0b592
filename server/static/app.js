/* secagg-dp dashboard: live view of a federated training run.
 *
 * Reads only public endpoints: GET v1/status, GET v1/rounds, GET v1/model/meta,
 * GET v1/rounds/current?wait=..&after=.. (long-poll), POST v1/predict.
 * Shows aggregates only (counts, global metrics, epsilon); never a device id or a
 * device's data. No external network, no build step, no dependencies: charts are SVG.
 * The operator panel calls v1/control/... only once the operator has typed the token
 * (kept in memory, sent as "Authorization: Bearer"); the device list it shows comes
 * from that authenticated call, the change log from the public status.
 * Federated evaluation (a round's "federated_eval") is shown as the server got it: DP-noised
 * sums, with the noise std next to every figure; nothing is de-noised or hidden.
 * Everything the server sends is inserted with textContent, never as HTML.
 */
"use strict";

(() => {
  const LONG_POLL_S = 25;
  const FALLBACK_POLL_MS = 2000;
  const MAX_BACKOFF_MS = 15000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const STAGES = {
    waiting: "Waiting for devices to register",
    advertise_keys: "Stage 1/5 · devices advertise their public keys",
    share_keys: "Stage 2/5 · devices exchange encrypted key shares",
    masked_input: "Stage 3/5 · devices upload masked, noised updates",
    consistency_check: "Stage 4/5 · consistency check (signatures)",
    unmask: "Stage 5/5 · unmasking the sum",
    done: "Round finished · preparing the next round",
    aborted: "Round aborted: too few devices left (nothing was revealed)",
    finished: "Training finished",
    paused: "Paused by the operator: no new round starts until resumed",
  };
  const STEP_ORDER = ["advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask"];

  const state = {
    status: null,
    rounds: [],
    meta: null,
    current: null,
    version: -1,
    metaVersion: null,
    longPoll: true,
    token: null,      // operator token: memory only
    devices: null,    // [{device_id, enabled}] from the authenticated device list
    dirty: new Set(), // settings inputs the operator is editing
    feRound: null,    // round picked for the federated-evaluation histogram; null: the latest
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- HTTP
  class ApiError extends Error {
    constructor(status, detail) {
      super(status ? `Server error ${status}: ${detail}` : detail);
      this.status = status;
      this.detail = detail;
    }
  }

  function detailText(body, fallback) {
    if (!body || body.detail === undefined) return fallback;
    const d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map((e) => (e && e.msg ? `${(e.loc || []).join(".")}: ${e.msg}` : String(e))).join("; ");
    }
    return JSON.stringify(d);
  }

  async function api(path, options = {}, timeoutMs = 15000) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutMs);
    let resp;
    try {
      resp = await fetch(path, { cache: "no-store", ...options, signal: ctrl.signal });
    } catch (err) {
      throw new ApiError(0, err.name === "AbortError" ? "the server did not answer in time" : "cannot reach the server");
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    const text = await resp.text();
    if (text) {
      try { body = JSON.parse(text); } catch (_) { body = null; }
    }
    if (!resp.ok) throw new ApiError(resp.status, detailText(body, resp.statusText || "request failed"));
    return body;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // ---------------------------------------------------------------- helpers
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  function count(v) {
    if (Array.isArray(v)) return v.length;
    if (isNum(v)) return v;
    return 0;
  }
  function dropoutCount(d) {
    if (!d) return 0;
    if (Array.isArray(d) || isNum(d)) return count(d);
    return Object.values(d).reduce((s, v) => s + count(v), 0);
  }
  function dropoutText(d) {
    if (!d || Array.isArray(d) || isNum(d)) return String(count(d));
    const parts = Object.entries(d).filter(([, v]) => count(v) > 0).map(([k, v]) => `${count(v)} at ${k.replace(/_/g, " ")}`);
    return parts.length ? parts.join(", ") : "0";
  }
  function fmt(v, digits = 3) {
    if (!isNum(v)) return "–";
    if (v !== 0 && (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3)) return v.toExponential(2);
    return Number(v.toPrecision(digits)).toString();
  }
  function pct(v) { return isNum(v) ? `${(100 * v).toFixed(1)}%` : "–"; }
  function metricLabel() {
    const m = (state.meta && state.meta.metric) || "accuracy";
    return m === "r2" ? "R²" : m.charAt(0).toUpperCase() + m.slice(1);
  }
  function metricIsFraction() {
    return !state.meta || !state.meta.metric || state.meta.metric === "accuracy";
  }
  function fmtMetric(v) { return metricIsFraction() ? pct(v) : fmt(v, 4); }
  // Only touch the DOM on change: live regions must not re-announce the same text.
  function setText(id, text) { const el = $(id); if (el && el.textContent !== text) el.textContent = text; }
  function show(el, on) { el.hidden = !on; }

  // ---------------------------------------------------------------- rendering: status
  function renderConn(ok, text) {
    const el = $("conn");
    el.dataset.state = ok ? "live" : "error";
    setText("conn-text", text || (ok ? (state.longPoll ? "Live" : "Live (polling)") : "Disconnected"));
  }

  function renderServerError(msg) {
    const el = $("server-error");
    el.textContent = msg || "";
    show(el, Boolean(msg));
  }

  // What the epsilon figures mean for the configured mechanism (mirrors dp.accounting_note).
  const MECHANISM_CAVEATS = {
    gaussian: "Mechanism gaussian: the sum of rounded shares is accounted as a Gaussian, " +
      "a close approximation, not a proof; ddgauss and skellam have proven bounds.",
    none: "Mechanism none: no noise is added (secure aggregation only), so there is no " +
      "differential privacy: ε is infinite.",
  };

  function renderCaveat(s) {
    const mech = s.config && s.config.dp ? s.config.dp.mechanism : null;
    const el = $("eps-caveat");
    const text = mech ? MECHANISM_CAVEATS[mech] : undefined;
    el.hidden = !text;
    el.textContent = text || "";
  }

  function renderStatus() {
    const s = state.status;
    if (!s) return;
    renderCaveat(s);
    const stage = s.training_done ? "finished" : s.stage || "unknown";
    const box = $("status");
    box.dataset.stage = stage;
    let text = STAGES[stage] || `Stage: ${stage}`;
    if (s.round !== null && s.round !== undefined && !["waiting", "finished"].includes(stage)) {
      text = `Round ${s.round} · ${text}`;
    }
    setText("stage-text", text);

    const detail = [];
    if (stage === "waiting") detail.push(`${count(s.registered)} device(s) registered so far.`);
    if (stage === "finished") {
      detail.push(`${s.rounds_done} of ${s.rounds_planned} planned rounds completed.`);
      if (s.finished_reason) detail.push(`Reason: ${s.finished_reason}.`);
    }
    const op = s.operator;
    if (op && op.pausing) detail.push("Pausing: the round in flight finishes, then no new round starts.");
    const cur = state.current;
    if (cur && isNum(cur.deadline) && !["waiting", "finished", "done", "aborted", "paused"].includes(stage)) {
      const left = Math.max(0, Math.round(cur.deadline - Date.now() / 1000));
      detail.push(`Stage deadline in about ${left} s; devices silent past it count as dropouts.`);
    }
    setText("stage-detail", detail.join(" "));

    const active = s.config && s.config.protocol ? Boolean(s.config.protocol.active) : true;
    const idx = STEP_ORDER.indexOf(stage);
    document.querySelectorAll("#steps li").forEach((li) => {
      const i = STEP_ORDER.indexOf(li.dataset.step);
      li.classList.toggle("done", idx >= 0 && i < idx);
      li.classList.toggle("skipped", li.dataset.step === "consistency_check" && !active);
      if (i === idx) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    });
    $("steps").classList.toggle("idle", idx < 0);
  }

  function renderCards() {
    const s = state.status;
    const meta = state.meta;
    const done = state.rounds.filter((r) => r.status === "done");
    const aborted = state.rounds.filter((r) => r.status === "aborted");
    if (meta || s) {
      setText("card-task", (meta && meta.task) || (s && s.task) || "–");
      if (meta) setText("card-model", `model v${meta.version} · ${Number(meta.dim).toLocaleString("en")} parameters`);
    }
    if (s) {
      setText("card-rounds", `${s.rounds_done} / ${s.rounds_planned}`);
      setText("card-devices", String(count(s.registered)));
      const q = isNum(s.sample_rate) ? ` · sampling rate q = ${fmt(s.sample_rate)}` : "";
      setText("card-devices-detail", `registered${q}`);
    }
    setText("card-aborted", aborted.length ? `${aborted.length} aborted round(s)` : "");
    setText("card-metric-h", metricLabel());
    setText("th-metric", metricLabel());
    const last = done[done.length - 1];
    setText("card-acc", last ? fmtMetric(last.accuracy) : "–");
    setText("card-loss", last ? `loss ${fmt(last.loss, 4)} after round ${last.round}` : "");

    const eps = s ? s.epsilon : null;
    const epsAmp = s ? s.epsilon_amplified : null;
    const budget = s ? s.epsilon_budget : null;
    setText("card-eps", isNum(eps) ? fmt(eps) + (isNum(budget) ? ` / ${fmt(budget)}` : "") : "–");
    const meter = $("eps-meter");
    if (isNum(eps) && isNum(budget) && budget > 0) {
      meter.max = budget;
      meter.value = Math.min(eps, budget);
      meter.high = 0.8 * budget;
      show(meter, true);
    } else {
      show(meter, false);
    }
    const parts = [];
    if (isNum(epsAmp)) parts.push(`amplified ${fmt(epsAmp)}`);
    if (s && isNum(s.delta)) parts.push(`δ = ${fmt(s.delta)}`);
    if (!isNum(budget)) parts.push("no budget set");
    setText("card-eps-detail", parts.join(" · "));
    setText("eps-delta", s && isNum(s.delta) ? `Both at δ = ${fmt(s.delta)}.` : "");
  }

  // ---------------------------------------------------------------- rendering: charts
  function svgEl(name, attrs = {}, parent = null) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (parent) parent.appendChild(el);
    return el;
  }

  function niceStep(span, maxTicks) {
    const raw = span / Math.max(1, maxTicks);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    const mult = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
    return mult * mag;
  }

  function ticks(lo, hi, maxTicks) {
    if (!(hi > lo)) hi = lo + 1;
    const step = niceStep(hi - lo, maxTicks);
    const out = [];
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return { ticks: out, step };
  }

  function tickLabel(v, step) {
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return v.toFixed(Math.min(decimals, 6));
  }

  /* A chart frame: axes with ticks, gridlines and labels; returns scales. */
  function frame(svg, { xMin, xMax, yMin, yMax, xLabel, yLabel, xInteger = true, xTick = null }) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 560, H = 300, m = { l: 62, r: 18, t: 14, b: 46 };
    const pw = W - m.l - m.r, ph = H - m.t - m.b;
    if (xMax <= xMin) { xMin -= 0.5; xMax += 0.5; }
    if (yMax <= yMin) { const pad = Math.abs(yMax) * 0.1 || 0.5; yMin -= pad; yMax += pad; }
    const xs = (x) => m.l + ((x - xMin) / (xMax - xMin)) * pw;
    const ys = (y) => m.t + ph - ((y - yMin) / (yMax - yMin)) * ph;
    const grid = svgEl("g", { class: "grid" }, svg);
    const axes = svgEl("g", { class: "axis" }, svg);
    const yt = ticks(yMin, yMax, 5);
    for (const v of yt.ticks) {
      if (v < yMin - 1e-12 || v > yMax + 1e-12) continue;
      svgEl("line", { x1: m.l, x2: m.l + pw, y1: ys(v), y2: ys(v) }, grid);
      const t = svgEl("text", { x: m.l - 8, y: ys(v) + 4, "text-anchor": "end" }, axes);
      t.textContent = tickLabel(v, yt.step);
    }
    let xt = ticks(xMin, xMax, 8);
    if (xInteger && xt.step < 1) xt = { ticks: xt.ticks.filter((v) => Number.isInteger(v)), step: 1 };
    for (const v of xt.ticks) {
      if (v < xMin - 1e-9 || v > xMax + 1e-9) continue;
      svgEl("line", { x1: xs(v), x2: xs(v), y1: m.t + ph, y2: m.t + ph + 5 }, axes);
      const t = svgEl("text", { x: xs(v), y: m.t + ph + 19, "text-anchor": "middle" }, axes);
      t.textContent = xTick ? xTick(v) : tickLabel(v, xt.step);
    }
    svgEl("line", { x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: "axis-line" }, axes);
    svgEl("line", { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, class: "axis-line" }, axes);
    const xl = svgEl("text", { x: m.l + pw / 2, y: H - 6, "text-anchor": "middle", class: "axis-label" }, axes);
    xl.textContent = xLabel;
    const yl = svgEl("text", {
      x: -(m.t + ph / 2), y: 16, transform: "rotate(-90)", "text-anchor": "middle", class: "axis-label",
    }, axes);
    yl.textContent = yLabel;
    return { xs, ys, m, pw, ph, W, H };
  }

  function setEmpty(id, empty) {
    const p = document.querySelector(`[data-empty-for="${id}"]`);
    if (p) show(p, empty);
    $(id).classList.toggle("is-empty", empty);
  }

  /* series: [{name, cls, points: [[x, y], ...]}]; hlines: [{y, label, cls}] */
  function lineChart(id, { series, hlines = [], xLabel, yLabel, yMin, yMax, fmtY }) {
    const svg = $(id);
    const all = series.flatMap((s) => s.points);
    setEmpty(id, all.length === 0);
    if (all.length === 0) { while (svg.firstChild) svg.removeChild(svg.firstChild); return; }
    const xsv = all.map((p) => p[0]);
    const ysv = all.map((p) => p[1]).concat(hlines.map((h) => h.y));
    let lo = yMin !== undefined ? Math.min(yMin, ...ysv) : Math.min(...ysv);
    let hi = yMax !== undefined ? Math.max(yMax, ...ysv) : Math.max(...ysv);
    if (yMin === undefined && yMax === undefined) { const pad = (hi - lo) * 0.08; lo -= pad; hi += pad; }
    const f = frame(svg, {
      xMin: Math.min(...xsv), xMax: Math.max(...xsv), yMin: lo, yMax: hi, xLabel, yLabel,
    });
    for (const h of hlines) {
      const g = svgEl("g", { class: `hline ${h.cls || ""}` }, svg);
      svgEl("line", { x1: f.m.l, x2: f.m.l + f.pw, y1: f.ys(h.y), y2: f.ys(h.y) }, g);
      const t = svgEl("text", { x: f.m.l + f.pw - 4, y: f.ys(h.y) - 6, "text-anchor": "end" }, g);
      t.textContent = h.label;
    }
    for (const s of series) {
      drawSeries(svg, f, s, (x, y) => `Round ${x}: ${s.name} ${fmtY ? fmtY(y) : fmt(y, 4)}`);
    }
  }

  /* One line series with a dot per point (class "pt", data-round = x); titleOf(x, y, i)
   * gives each dot's tooltip. Returns the series group, or null when it has no points. */
  function drawSeries(svg, f, s, titleOf, attr = "data-round") {
    if (!s.points.length) return null;
    const g = svgEl("g", { class: `series ${s.cls}`, "data-series": s.name }, svg);
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${f.xs(p[0]).toFixed(1)},${f.ys(p[1]).toFixed(1)}`).join("");
    svgEl("path", { d, fill: "none" }, g);
    s.points.forEach(([x, y], i) => {
      const c = svgEl("circle", { cx: f.xs(x), cy: f.ys(y), r: 3.5, class: "pt", [attr]: x }, g);
      svgEl("title", {}, c).textContent = titleOf(x, y, i);
    });
    return g;
  }

  // Stages before a device's masked input is in the sum. A device that goes silent later
  // (consistency check, unmask) already contributed: it is a survivor, not a dropout.
  const PRE_INPUT = ["advertise_keys", "share_keys", "masked_input"];
  function droppedBeforeInput(d) {
    if (!d) return 0;
    if (Array.isArray(d) || isNum(d)) return count(d);
    return PRE_INPUT.reduce((s, k) => s + count(d[k]), 0);
  }

  /* One bar per settled round that adds up to its cohort: sampled = contributed + dropped
   * (done rounds), or dropped + the rest whose inputs were discarded (aborted rounds). */
  function participationChart(id, rounds) {
    const svg = $(id);
    const rows = rounds.filter((r) => r.status === "done" || r.status === "aborted");
    setEmpty(id, rows.length === 0);
    if (!rows.length) { while (svg.firstChild) svg.removeChild(svg.firstChild); return; }
    const data = rows.map((r) => {
      const sampled = count(r.sampled);
      const late = dropoutCount(r.dropouts) - droppedBeforeInput(r.dropouts);
      if (r.status === "done") {
        const surv = Math.min(sampled, count(r.survivors));
        return { round: r.round, status: r.status, sampled, surv, drop: sampled - surv, other: 0, late };
      }
      const drop = Math.min(sampled, droppedBeforeInput(r.dropouts));
      return { round: r.round, status: r.status, sampled, surv: 0, drop, other: sampled - drop, late };
    });
    const xMin = Math.min(...data.map((d) => d.round)), xMax = Math.max(...data.map((d) => d.round));
    const yMax = Math.max(1, ...data.map((d) => d.sampled));
    const f = frame(svg, {
      xMin: xMin - 0.6, xMax: xMax + 0.6, yMin: 0, yMax: yMax * 1.05, xLabel: "round", yLabel: "devices",
    });
    const slot = f.pw / (xMax - xMin + 1.2);
    const bw = Math.max(2, Math.min(28, slot * 0.7));
    for (const d of data) {
      const g = svgEl("g", { class: `bar ${d.status}`, "data-round": d.round }, svg);
      let base = 0;
      for (const [key, cls] of [["surv", "seg-surv"], ["drop", "seg-drop"], ["other", "seg-other"]]) {
        const v = d[key];
        if (v <= 0) continue;
        svgEl("rect", {
          x: f.xs(d.round) - bw / 2, width: bw, y: f.ys(base + v), height: Math.max(0.5, f.ys(base) - f.ys(base + v)), class: cls,
        }, g);
        base += v;
      }
      const title = svgEl("title", {}, g);
      const lateText = d.late > 0 ? `; ${d.late} went silent after contributing (still survivors)` : "";
      title.textContent = d.status === "done"
        ? `Round ${d.round} (done): ${d.sampled} sampled = ${d.surv} contributed + ${d.drop} dropped${lateText}`
        : `Round ${d.round} (aborted): ${d.sampled} sampled = ${d.drop} dropped + ${d.other} whose inputs were discarded`;
      if (d.status === "aborted") {
        const t = svgEl("text", { x: f.xs(d.round), y: f.ys(base) - 4, "text-anchor": "middle", class: "abort-mark" }, g);
        t.textContent = "✕";
      }
    }
  }

  function renderCharts() {
    const rounds = state.rounds;
    const done = rounds.filter((r) => r.status === "done");
    const finiteSeries = (rs, key) => rs.filter((r) => isNum(r[key])).map((r) => [r.round, r[key]]);
    const frac = metricIsFraction();
    lineChart("chart-acc", {
      series: [{ name: metricLabel(), cls: "s-acc", points: finiteSeries(done, "accuracy") }],
      xLabel: "round", yLabel: frac ? `${metricLabel()} (test set)` : `${metricLabel()} (test set)`,
      yMin: frac ? 0 : undefined, yMax: frac ? 1 : undefined, fmtY: fmtMetric,
    });
    setText("acc-h", `Global model ${frac ? metricLabel().toLowerCase() : metricLabel()} per round`);
    lineChart("chart-loss", {
      series: [{ name: "loss", cls: "s-loss", points: finiteSeries(done, "loss") }],
      xLabel: "round", yLabel: "loss (test set)",
    });
    const settled = rounds.filter((r) => r.status === "done" || r.status === "aborted");
    const budget = state.status && isNum(state.status.epsilon_budget) ? state.status.epsilon_budget
      : (settled.length && isNum(settled[settled.length - 1].epsilon_budget) ? settled[settled.length - 1].epsilon_budget : null);
    const epsPts = finiteSeries(settled, "epsilon");
    const ampPts = finiteSeries(settled, "epsilon_amplified");
    lineChart("chart-eps", {
      series: [
        { name: "ε", cls: "s-eps", points: epsPts },
        { name: "ε amplified", cls: "s-epsamp", points: ampPts },
      ],
      hlines: budget !== null && (epsPts.length || ampPts.length) ? [{ y: budget, label: `budget ε = ${fmt(budget)}`, cls: "budget" }] : [],
      xLabel: "round", yLabel: "ε spent (cumulative)", yMin: 0,
    });
    participationChart("chart-part", rounds);
  }

  // ---------------------------------------------------------------- rendering: federated evaluation
  /* A round's "federated_eval": the cohort evaluated the model of the previous round
   * (fe.model_version) on held-out data each device keeps; the server learns only the secure,
   * DP-noised sums. Every figure therefore carries noise of the stated std: a histogram count
   * can be fractional or negative, and the accuracy can leave [0, 1]. That is shown as is. */
  function fedRounds() {
    return state.rounds.filter((r) => r.federated_eval && typeof r.federated_eval === "object"
      && Array.isArray(r.federated_eval.histogram) && isNum(r.federated_eval.model_version));
  }

  /* The server's test-set accuracy of one model version: the round that released that
   * version records it (round record "model_version" = the model it produced). */
  function serverAccuracyOf(version) {
    for (let i = state.rounds.length - 1; i >= 0; i--) {
      const r = state.rounds[i];
      if (r.status === "done" && r.model_version === version && isNum(r.accuracy)) return r.accuracy;
    }
    return null;
  }

  const feStd = (v) => (isNum(v) && v > 0 ? v : 0);
  // A noised accuracy can lie far outside [0, 1]; the chart stops at these bounds (tooltips
  // keep the raw value) so one very noisy round does not flatten the others.
  const FE_Y_LO = -0.5, FE_Y_HI = 1.5;

  /* Federated accuracy per evaluated model version, with error bars of ±2 std of its DP
   * noise, next to the server's test-set accuracy of the same version. */
  function fedAccuracyChart(id, evals) {
    const svg = $(id);
    const byVersion = new Map();  // a version evaluated twice: its latest evaluation
    for (const r of evals) if (isNum(r.federated_eval.accuracy)) byVersion.set(r.federated_eval.model_version, r);
    const fed = [...byVersion.entries()].sort((a, b) => a[0] - b[0]);
    setEmpty(id, fed.length === 0);
    if (!fed.length) { while (svg.firstChild) svg.removeChild(svg.firstChild); return; }
    const server = fed.map(([v]) => [v, serverAccuracyOf(v)]).filter((p) => isNum(p[1]));
    const ysv = fed.flatMap(([, r]) => {
      const fe = r.federated_eval;
      return [fe.accuracy - 2 * feStd(fe.accuracy_stddev), fe.accuracy + 2 * feStd(fe.accuracy_stddev)];
    }).concat(server.map((p) => p[1]));
    const span = Math.max(1, ...ysv) - Math.min(0, ...ysv);  // a little room for the caps
    const lo = Math.max(FE_Y_LO, Math.min(0, ...ysv) - 0.03 * span);
    const hi = Math.min(FE_Y_HI, Math.max(1, ...ysv) + 0.03 * span);
    const inside = (y) => y >= lo && y <= hi;
    const clampY = (y) => Math.min(hi, Math.max(lo, y));
    const versions = fed.map(([v]) => v);
    const f = frame(svg, {
      xMin: Math.min(...versions) - 0.3, xMax: Math.max(...versions) + 0.3, yMin: lo, yMax: hi,
      xLabel: "model version (evaluated by the next round's devices)", yLabel: "accuracy",
    });
    const bars = svgEl("g", { class: "errbars s-fe" }, svg);
    for (const [v, r] of fed) {
      const fe = r.federated_eval;
      const s2 = 2 * feStd(fe.accuracy_stddev);
      if (s2 === 0) continue;
      const x = f.xs(v);
      const ends = [fe.accuracy - s2, fe.accuracy + s2];
      svgEl("line", { x1: x, x2: x, y1: f.ys(clampY(ends[0])), y2: f.ys(clampY(ends[1])), class: "errbar" }, bars);
      for (const y of ends.filter(inside)) svgEl("line", { x1: x - 5, x2: x + 5, y1: f.ys(y), y2: f.ys(y), class: "errbar" }, bars);
    }
    drawSeries(svg, f, { name: "server test set", cls: "s-acc", points: server },
      (v, y) => `Model v${v}: server test-set accuracy ${pct(y)}`, "data-version");
    drawSeries(svg, f, {
      name: "federated", cls: "s-fe", points: fed.map(([v, r]) => [v, clampY(r.federated_eval.accuracy)]),
    }, (v, _y, i) => {
      const r = fed[i][1], fe = r.federated_eval;
      return `Model v${v}, evaluated in round ${r.round} by ${count(fe.devices)} devices: federated accuracy `
        + `${pct(fe.accuracy)} ± ${pct(2 * feStd(fe.accuracy_stddev))} (2 std of the DP noise)`;
    }, "data-version");
  }

  /* The noised histogram of device accuracies of one round: bars drawn from 0 (a negative
   * count has no bar), each labelled with its raw noised count, also in its tooltip. */
  function fedHistogramChart(id, r) {
    const svg = $(id);
    const fe = r ? r.federated_eval : null;
    const hist = fe ? fe.histogram.map((v) => (isNum(v) ? v : NaN)) : [];
    setEmpty(id, hist.length === 0);
    if (!hist.length) { while (svg.firstChild) svg.removeChild(svg.firstChild); return; }
    const B = hist.length;
    const top = Math.max(1, ...hist.filter(isNum));
    const f = frame(svg, {
      xMin: 0, xMax: 1, yMin: 0, yMax: top * 1.12, xInteger: false,
      xLabel: "device accuracy on its held-out data", yLabel: "devices (noised count)",
      xTick: (v) => `${Math.round(100 * v)}%`,
    });
    const slot = f.pw / B, bw = Math.max(2, slot - 4);
    const noise = feStd(fe.count_stddev) > 0 ? `DP-noised, noise std ${fmt(fe.count_stddev)} per count` : "no noise added";
    hist.forEach((v, j) => {
      const a = Math.round((100 * j) / B), b = Math.round((100 * (j + 1)) / B);
      const range = j === B - 1 ? `${a}% ≤ accuracy ≤ ${b}%` : `${a}% ≤ accuracy < ${b}%`;
      const neg = v < 0;
      const g = svgEl("g", { class: `hbar${neg ? " neg" : ""}`, "data-bucket": j, "data-count": v }, svg);
      const yTop = f.ys(isNum(v) ? Math.max(0, v) : 0);
      svgEl("rect", { x: f.xs(j / B) + (slot - bw) / 2, width: bw, y: yTop, height: f.ys(0) - yTop }, g);
      const label = svgEl("text", { x: f.xs((j + 0.5) / B), y: yTop - 4, "text-anchor": "middle" }, g);
      label.textContent = isNum(v) ? v.toFixed(1) : "–";
      svgEl("title", {}, g).textContent = `${range}: ${fmt(v, 4)} devices (raw count, ${noise})`
        + (neg ? "; a negative count is DP noise, not an error" : "");
    });
  }

  function renderFedEval() {
    const evals = fedRounds();
    const on = evals.length > 0;
    $("fedeval").dataset.fedeval = on ? "on" : "off";
    show($("fe-off"), !on);
    show($("fe-body"), on);
    if (!on) return;
    const sel = $("fe-round");
    const key = evals.map((r) => r.round).join(",");
    if (sel.dataset.key !== key) {  // rebuilt only when the rounds change: keeps focus and choice
      const frag = document.createDocumentFragment();
      for (const r of evals.slice().reverse()) {
        const o = document.createElement("option");
        o.value = String(r.round);
        o.textContent = `${r.round} (model v${r.federated_eval.model_version})`;
        frag.appendChild(o);
      }
      sel.replaceChildren(frag);
      sel.dataset.key = key;
    }
    let chosen = state.feRound === null ? null : evals.find((r) => r.round === state.feRound);
    if (!chosen) {
      chosen = evals[evals.length - 1];
      state.feRound = null;  // follow the latest evaluation
    }
    sel.value = String(chosen.round);
    const fe = chosen.federated_eval;

    const server = serverAccuracyOf(fe.model_version);
    const sumKey = [chosen.round, fe.accuracy, fe.accuracy_stddev, fe.devices, server].join("|");
    const summary = $("fe-summary");
    if (summary.dataset.key !== sumKey) {  // a live region: rewrite only on change
      const strong = (id, text) => { const el = document.createElement("strong"); el.id = id; el.textContent = text; return el; };
      const sd = feStd(fe.accuracy_stddev);
      summary.replaceChildren(
        `Model v${fe.model_version}, evaluated in round ${chosen.round} by ${count(fe.devices)} devices: federated accuracy `,
        strong("fe-acc", pct(fe.accuracy)),
        sd > 0 ? ` (±\u00a0${pct(sd)}, 1 std of the DP noise)` : " (no noise added)",
        " · server test-set accuracy of the same model ",
        strong("fe-server-acc", isNum(server) ? pct(server) : "not recorded"),
        ".",
      );
      summary.dataset.key = sumKey;
    }

    fedAccuracyChart("chart-fe-acc", evals);
    fedHistogramChart("chart-fe-hist", chosen);
    const hist = fe.histogram.filter(isNum);
    const total = hist.reduce((a, b) => a + b, 0);
    const noise = feStd(fe.count_stddev) > 0
      ? `Each count is DP-noised (noise std ${fmt(fe.count_stddev)} devices per count), so a count can be `
        + "fractional or negative: that is noise, not an error. Bars start at 0; hover one for its raw count."
      : "No noise was added to these counts.";
    setText("fe-hist-caption", `Round ${chosen.round}, model v${fe.model_version}. ${noise} `
      + `The ${hist.length} counts sum to ${fmt(total)}; ${count(fe.devices)} devices took part.`);
    const parts = [`held-out examples ${fmt(fe.examples)} ± ${fmt(feStd(fe.examples_stddev))}`];
    parts.push(isNum(fe.loss)
      ? `loss ${fmt(fe.loss, 4)} ± ${fmt(feStd(fe.loss_stddev))} (example-weighted)`
      : "loss not shown: the noised example count is too uncertain to divide by");
    setText("fe-note", `Round ${chosen.round}: ${parts.join(" · ")} (± 1 std of the DP noise).`);
  }

  function onFedRound() {
    const evals = fedRounds();
    const picked = Number($("fe-round").value);
    const latest = evals.length ? evals[evals.length - 1].round : null;
    state.feRound = picked === latest ? null : picked;
    renderFedEval();
  }

  // ---------------------------------------------------------------- rendering: table
  function renderTable() {
    const tbody = document.querySelector("#round-table tbody");
    const recent = state.rounds.slice(-200);
    const first = recent.length ? recent[0].round : 0;
    // operator changes sit between the rounds they separate (a change applies from its
    // before_round on): oldest first, then reversed like the rounds
    const items = recent.map((r) => ({ key: r.round, order: 1, r }));
    for (const c of changes()) {
      if (c.before_round >= first) items.push({ key: c.before_round, order: 0, c });
    }
    items.sort((a, b) => a.key - b.key || a.order - b.order || (a.c && b.c ? a.c.id - b.c.id : 0));
    const frag = document.createDocumentFragment();
    for (const item of items.reverse()) {
      if (item.c) {
        const tr = document.createElement("tr");
        tr.className = "change";
        tr.dataset.change = String(item.c.id);
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = "⚙";
        const td = document.createElement("td");
        td.colSpan = 9;
        td.textContent = `operator, from round ${item.c.before_round}: ${changeText(item.c)}`;
        tr.append(th, td);
        frag.appendChild(tr);
        continue;
      }
      const r = item.r;
      const tr = document.createElement("tr");
      tr.className = `st-${r.status}`;
      tr.dataset.round = r.round;
      const dur = isNum(r.started_at) && isNum(r.finished_at) ? `${(r.finished_at - r.started_at).toFixed(1)} s` : "–";
      const cells = [
        String(r.round), r.status, String(count(r.sampled)),
        r.status === "done" ? String(count(r.survivors)) : "–",
        dropoutText(r.dropouts),
        r.status === "done" ? fmtMetric(r.accuracy) : "–",
        r.status === "done" ? fmt(r.loss, 4) : "–",
        fmt(r.epsilon), fmt(r.epsilon_amplified), dur,
      ];
      cells.forEach((c, i) => {
        const td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) td.scope = "row";
        td.textContent = c;
        if (i === 1 && r.abort_reason) td.title = r.abort_reason;
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }

  // ---------------------------------------------------------------- operator panel
  function changes() {
    const s = state.status;
    return s && Array.isArray(s.changes) ? s.changes : [];
  }

  const SETTING_NAMES = { rounds: "rounds planned", per_round: "devices per round", epsilon_budget: "ε budget" };
  function settingValue(v) { return v === null || v === undefined ? "none" : isNum(v) ? fmt(v, 4) : String(v); }

  function changeText(c) {
    const d = c.detail || {};
    switch (c.action) {
      case "start": return d.resumed ? "training resumed (start)" : "training started";
      case "pause": return d.round_in_flight ? "paused after the round in flight" : "paused";
      case "resume": return "resumed";
      case "devices": return `${count(d.count)} device(s) ${d.enabled ? "enabled" : "disabled"}`;
      case "settings":
        return Object.entries(d).map(([k, v]) => (Array.isArray(v)
          ? `${SETTING_NAMES[k] || k} ${settingValue(v[0])} → ${settingValue(v[1])}`
          : `${SETTING_NAMES[k] || k} ${settingValue(v)}`)).join("; ");
      default: return c.action;
    }
  }

  function renderControl() {
    const s = state.status;
    const op = s ? s.operator : null;
    const panel = $("control");
    show(panel, Boolean(op));
    if (!op) return;
    const parts = [`Training ${op.training}${op.pausing ? " (pausing after the round in flight)" : ""}`,
      `${op.rounds_done} of ${op.rounds_planned} rounds`,
      `${op.per_round} device(s) per round (${op.sampling} sampling)`,
      isNum(op.epsilon_budget) ? `ε budget ${fmt(op.epsilon_budget)}` : "no ε budget",
      `${op.enabled} of ${op.registered} device(s) enabled`];
    setText("control-state", parts.join(" · ") + ".");
    panel.dataset.training = op.training;
    const fill = (id, key, v) => {
      const el = $(id);
      if (document.activeElement !== el && !state.dirty.has(key)) el.value = v === null || v === undefined ? "" : String(v);
    };
    fill("set-rounds", "rounds", op.rounds_planned);
    fill("set-per-round", "per_round", op.per_round);
    fill("set-budget", "epsilon_budget", op.epsilon_budget);
    $("set-per-round").disabled = Boolean(op.cohort_change);
    const note = $("cohort-note");
    note.textContent = op.cohort_change ? `The cohort cannot change: ${op.cohort_change}.` : "";
    show(note, Boolean(op.cohort_change));
    $("ctl-pause").disabled = op.paused || op.training === "finished";
    $("ctl-resume").disabled = !op.paused;
    $("ctl-start").disabled = op.training === "running";
    const list = $("change-log");
    const items = changes().slice().reverse();
    const frag = document.createDocumentFragment();
    for (const c of items) {
      const li = document.createElement("li");
      li.dataset.action = c.action;
      const t = document.createElement("time");
      const when = new Date(c.at * 1000);
      t.dateTime = when.toISOString();
      t.textContent = when.toLocaleTimeString();
      li.append(t, `from round ${c.before_round}: ${changeText(c)}`);
      frag.appendChild(li);
    }
    list.replaceChildren(frag);
    const empty = document.querySelector('[data-empty-for="change-log"]');
    if (empty) show(empty, items.length === 0);
  }

  function renderDevices() {
    const ul = $("device-list");
    const frag = document.createDocumentFragment();
    for (const d of state.devices || []) {
      const li = document.createElement("li");
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = Boolean(d.enabled);
      box.dataset.device = String(d.device_id);
      label.append(box, ` device ${d.device_id}`);
      li.appendChild(label);
      frag.appendChild(li);
    }
    ul.replaceChildren(frag);
  }

  function controlMessage(ok, text) {
    const msg = $("control-msg"), err = $("control-error");
    msg.textContent = ok ? text || "" : "";
    err.textContent = ok ? "" : text || "";
    show(msg, ok && Boolean(text));
    show(err, !ok && Boolean(text));
  }

  function controlApi(path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    const options = { method: body === undefined ? "GET" : "POST", headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return api(`v1/control/${path}`, options);
  }

  async function loadDevices() {
    state.devices = await controlApi("devices");
    renderDevices();
  }

  async function onToken(ev) {
    ev.preventDefault();
    const token = $("control-token").value.trim();
    if (!token) { controlMessage(false, "Type the operator token first."); return; }
    state.token = token;
    try {
      await loadDevices();
      $("control-actions").disabled = false;
      $("control-token").value = "";
      controlMessage(true, "Unlocked: the controls below act on the server.");
    } catch (err) {
      state.token = null;
      $("control-actions").disabled = true;
      controlMessage(false, err.message);
    }
  }

  async function runControl(work) {
    const box = $("control-actions");
    box.disabled = true;
    try {
      const out = await work();
      controlMessage(true, out && out.message ? out.message : "Done.");
      await refresh();
    } catch (err) {
      if (err.status === 401) state.token = null;
      controlMessage(false, err.message);
    } finally {
      box.disabled = !state.token;
      if (state.status) renderControl();
    }
  }

  function onAction(ev) {
    const action = ev.currentTarget.dataset.action;
    runControl(() => controlApi(action, {}));
  }

  function onSettings(ev) {
    ev.preventDefault();
    const op = state.status && state.status.operator;
    if (!op) return;
    const body = {};
    const intOf = (id) => { const v = $(id).value.trim(); return v === "" ? NaN : Number(v); };
    const rounds = intOf("set-rounds");
    if (rounds !== op.rounds_planned) body.rounds = rounds;
    if (!$("set-per-round").disabled) {
      const per = intOf("set-per-round");
      if (per !== op.per_round) body.per_round = per;
    }
    const rawBudget = $("set-budget").value.trim();
    const budget = rawBudget === "" ? null : Number(rawBudget);
    if (budget !== op.epsilon_budget) body.epsilon_budget = budget;
    for (const [k, v] of Object.entries(body)) {
      if (v !== null && !Number.isFinite(v)) { controlMessage(false, `${SETTING_NAMES[k]} must be a number.`); return; }
    }
    if (!Object.keys(body).length) { controlMessage(true, "Nothing changed."); return; }
    runControl(async () => {
      const out = await controlApi("settings", body);
      state.dirty.clear();
      return out;
    });
  }

  function onDevices(ev) {
    ev.preventDefault();
    const before = new Map((state.devices || []).map((d) => [d.device_id, Boolean(d.enabled)]));
    const on = [], off = [];
    document.querySelectorAll("#device-list input[type=checkbox]").forEach((box) => {
      const id = Number(box.dataset.device);
      if (before.get(id) !== box.checked) (box.checked ? on : off).push(id);
    });
    if (!on.length && !off.length) { controlMessage(true, "Nothing changed."); return; }
    runControl(async () => {
      const said = [];
      try {
        if (on.length) said.push((await controlApi("devices", { device_ids: on, enabled: true })).message);
        if (off.length) said.push((await controlApi("devices", { device_ids: off, enabled: false })).message);
      } finally {
        await loadDevices().catch(() => {});
      }
      return { message: said.join("; ") };
    });
  }

  function renderAll() {
    renderStatus();
    renderCards();
    renderCharts();
    renderFedEval();
    renderTable();
    renderControl();
    const hasFeatures = state.meta && state.meta.num_classes === null;
    show($("features-field"), Boolean(hasFeatures));
    const shape = state.meta && Array.isArray(state.meta.input_shape) ? state.meta.input_shape : null;
    if (state.meta) {
      setText("predict-hint", hasFeatures
        ? `Task ${state.meta.task} takes ${shape ? shape.reduce((a, b) => a * b, 1) : "N"} numbers: upload a CSV/JSON file or type them. Nothing is stored.`
        : "Upload an image (PNG or JPEG, light or dark background); the server classifies it with the current global model and does not store it.");
    }
    setText("updated", `Updated ${new Date().toLocaleTimeString()}.`);
  }

  // ---------------------------------------------------------------- data flow
  async function refresh() {
    // The status first, then the log: the log is then at least as new as the version we
    // record, so a change that lands between the two reads is seen as a newer version by
    // the next long-poll and read again. Read together, an older log could sit under a
    // newer status (say "finished") with nothing left to wake the page.
    const status = await api("v1/status");
    const rounds = await api("v1/rounds");
    state.status = status;
    state.rounds = Array.isArray(rounds) ? rounds.slice().sort((a, b) => a.round - b.round) : [];
    if (!state.meta || state.metaVersion !== status.model_version) {
      try {
        state.meta = await api("v1/model/meta");
        state.metaVersion = status.model_version;
      } catch (err) {
        renderServerError(`Model metadata unavailable: ${err.message}`);
      }
    }
    if (isNum(status.version)) state.version = Math.max(state.version, status.version);
    renderAll();
  }

  async function liveLoop() {
    let backoff = 1000;
    for (;;) {
      try {
        if (state.longPoll) {
          const t0 = Date.now();
          const cur = await api(`v1/rounds/current?wait=${LONG_POLL_S}&after=${state.version}`, {}, (LONG_POLL_S + 15) * 1000);
          state.current = cur;
          if (!cur || !isNum(cur.version)) {
            state.longPoll = false;  // no usable version: plain polling instead
            continue;
          }
          if (cur.version !== state.version) {
            state.version = Math.max(state.version, cur.version);
            await refresh();
          } else {
            renderStatus();
            // A server that answers at once without a change must not make us spin.
            if (Date.now() - t0 < 500) await sleep(FALLBACK_POLL_MS);
          }
        } else {
          await sleep(FALLBACK_POLL_MS);
          await refresh();
        }
        renderConn(true);
        renderServerError("");
        backoff = 1000;
      } catch (err) {
        if (state.longPoll && (err.status === 404 || err.status === 405)) {
          state.longPoll = false;  // no long-poll on this server: poll the status instead
          continue;
        }
        renderConn(false, err.status ? "Server error" : "Disconnected, retrying…");
        renderServerError(err.message);
        await sleep(backoff);
        backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
      }
    }
  }

  // ---------------------------------------------------------------- predict form
  let previewUrl = null;

  function renderPrediction(out) {
    const box = $("prediction");
    box.replaceChildren();
    const head = document.createElement("p");
    head.className = "pred-head";
    if (out.class_name !== null && out.class_name !== undefined) {
      head.append("Prediction: ");
      const strong = document.createElement("strong");
      strong.id = "pred-class";
      strong.textContent = out.class_name;
      head.append(strong, ` (label ${out.label})`);
    } else if (isNum(out.value)) {
      head.append("Predicted value: ");
      const strong = document.createElement("strong");
      strong.id = "pred-class";
      strong.textContent = fmt(out.value, 5);
      head.append(strong);
    } else {
      head.textContent = "The server returned no prediction.";
    }
    if (isNum(out.model_version)) head.append(` · global model v${out.model_version}`);
    box.appendChild(head);
    const scores = Array.isArray(out.scores) ? out.scores : [];
    if (scores.length) {
      const names = (state.meta && state.meta.class_names) || [];
      const top = scores.map((s, i) => ({ s, i })).sort((a, b) => b.s - a.s).slice(0, 5);
      const ul = document.createElement("ul");
      ul.className = "scores";
      ul.setAttribute("aria-label", "Top class probabilities");
      for (const { s, i } of top) {
        const li = document.createElement("li");
        const name = document.createElement("span");
        name.className = "name";
        name.textContent = names[i] !== undefined ? names[i] : String(i);
        const bar = document.createElement("span");
        bar.className = "bar";
        const fill = document.createElement("span");
        fill.style.width = `${Math.max(0, Math.min(100, 100 * s)).toFixed(1)}%`;
        bar.appendChild(fill);
        const val = document.createElement("span");
        val.className = "val";
        val.textContent = pct(s);
        li.append(name, bar, val);
        ul.appendChild(li);
      }
      box.appendChild(ul);
    }
  }

  function predictError(msg) {
    const el = $("predict-error");
    el.textContent = msg || "";
    show(el, Boolean(msg));
  }

  async function onPredict(ev) {
    ev.preventDefault();
    predictError("");
    const file = $("predict-file").files[0];
    const typed = $("predict-features").value.trim();
    let options;
    if (file) {
      const form = new FormData();
      form.append("file", file, file.name);
      options = { method: "POST", body: form };
    } else if (typed && !$("features-field").hidden) {
      const features = typed.split(/[\s,;]+/).filter(Boolean).map(Number);
      if (features.some((v) => !Number.isFinite(v))) {
        predictError("Features must be numbers separated by commas.");
        return;
      }
      options = { method: "POST", body: JSON.stringify({ features }), headers: { "Content-Type": "application/json" } };
    } else {
      predictError("Choose a file first.");
      return;
    }
    const btn = $("predict-btn");
    btn.disabled = true;
    btn.textContent = "Predicting…";
    try {
      const out = await api("v1/predict", options, 30000);
      renderPrediction(out);
    } catch (err) {
      $("prediction").replaceChildren();
      predictError(err.message);
    } finally {
      btn.disabled = false;
      btn.textContent = "Predict";
    }
  }

  function onFileChange() {
    const file = $("predict-file").files[0];
    const img = $("predict-preview");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    if (file && file.type.startsWith("image/")) {
      previewUrl = URL.createObjectURL(file);
      img.src = previewUrl;
      show(img, true);
    } else {
      img.removeAttribute("src");
      show(img, false);
    }
    predictError("");
  }

  // ---------------------------------------------------------------- start
  async function start() {
    $("predict-form").addEventListener("submit", onPredict);
    $("predict-file").addEventListener("change", onFileChange);
    $("token-form").addEventListener("submit", onToken);
    $("settings-form").addEventListener("submit", onSettings);
    $("devices-form").addEventListener("submit", onDevices);
    $("fe-round").addEventListener("change", onFedRound);
    document.querySelectorAll("#control-actions button[data-action]").forEach((b) => b.addEventListener("click", onAction));
    for (const [id, key] of [["set-rounds", "rounds"], ["set-per-round", "per_round"], ["set-budget", "epsilon_budget"]]) {
      $(id).addEventListener("input", () => state.dirty.add(key));
    }
    setInterval(() => { if (state.current && isNum(state.current.deadline)) renderStatus(); }, 1000);
    for (let backoff = 1000; ; backoff = Math.min(MAX_BACKOFF_MS, backoff * 2)) {
      try {
        await refresh();
        try {
          state.current = await api("v1/rounds/current");  // stage deadline, if any
          renderStatus();
        } catch (_) { /* optional: the status alone is enough */ }
        renderConn(true);
        renderServerError("");
        break;
      } catch (err) {
        renderConn(false, "Cannot reach the server, retrying…");
        renderServerError(err.message);
        setText("stage-text", "No data yet");
        await sleep(backoff);
      }
    }
    liveLoop();
  }

  window.secaggDashboard = { state, refresh };  // for debugging in the console and for tests
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
