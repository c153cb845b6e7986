/* The gradlab pages: the job list (/), a job's live page (/jobs/{id}), studies, comparisons, a dataset's preview
   (/datasets/{id}), an uploaded model (/models/{id}) and the lists of studies, datasets and models (/studies,
   /datasets, /models), all built on the public HTTP API. Each page is a template (api/templates) naming itself in
   <body data-page>; charts.js, loaded first, holds the charts' arithmetic.

   When the server requires authentication, the API key typed into the header field is kept in localStorage and
   sent as "Authorization: Bearer …". A running job's page follows its Server-Sent Events, read with fetch rather
   than EventSource because EventSource cannot send that header (the format and the Last-Event-ID resumption are
   the same); a finished job's metrics are read page by page instead. */
(function () {
  "use strict";

  const KEY = "gradlab.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const REFRESH_MS = 2000;
  const $ = sel => document.querySelector(sel);
  const {groupNames, spansDecades, extent, padded, tickLabels, thinDecades, axisSize, fitX, STEP_INCRS} = window.gradlabCharts;

  // --- API access ------------------------------------------------------------------------------------------------
  function apiKey() {
    try { return localStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }

  function headers(extra) {
    const h = Object.assign({Accept: "application/json"}, extra || {});
    const key = apiKey();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function problem(resp) {
    let body = {};
    try { body = await resp.json(); } catch (e) { body = {detail: resp.statusText}; }
    const err = new Error(`${resp.status} ${body.title || resp.statusText}: ${body.detail || ""}`);
    err.status = resp.status;
    return err;
  }

  async function api(path, options) {
    const opts = Object.assign({cache: "no-store"}, options || {});
    opts.headers = headers(opts.headers);
    const resp = await fetch(path, opts);
    if (!resp.ok) throw await problem(resp);
    return resp;
  }

  function showError(err) {
    const box = $("#error");
    if (!err) { box.hidden = true; box.textContent = ""; return; }
    box.textContent = String(err.message || err) + (err.status === 401
      ? "\nThis server requires an API key: type it into the field at the top right." : "");
    box.hidden = false;
  }

  function initKeyForm(onChange) {
    const input = $("#api-key");
    input.value = apiKey();
    $("#key-form").addEventListener("submit", ev => {
      ev.preventDefault();
      try {
        if (input.value.trim()) localStorage.setItem(KEY, input.value.trim()); else localStorage.removeItem(KEY);
      } catch (e) { showError(new Error("this browser does not allow storing the key")); }
      onChange();
    });
  }

  /* Server-Sent Events over fetch: calls onEvent({event, data, id}) until the terminal status event; a dropped
     connection is resumed with Last-Event-ID. Resolves when the job is terminal; rejects on an API error. */
  async function streamEvents(path, onEvent, signal) {
    let lastId = null, retryMs = 2000;
    while (!signal.aborted) {
      const extra = {Accept: "text/event-stream"};
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      let resp;
      try {
        resp = await fetch(path, {headers: headers(extra), cache: "no-store", signal: signal});
      } catch (e) {
        if (signal.aborted) return;
        await sleep(retryMs);
        continue;
      }
      if (!resp.ok) throw await problem(resp);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "", name = "message", data = [];
      try {
        for (;;) {
          const chunk = await reader.read();
          if (chunk.done) break;
          buffer += chunk.value;
          const lines = buffer.split(/\r\n|\r|\n/);
          buffer = lines.pop();
          for (const line of lines) {
            if (line === "") {
              if (data.length) {
                const ev = {event: name, data: JSON.parse(data.join("\n")), id: lastId};
                onEvent(ev);
                if (ev.event === "status" && TERMINAL.has(ev.data.status)) { reader.cancel(); return; }
              }
              name = "message"; data = [];
            } else if (!line.startsWith(":")) {
              const i = line.indexOf(":");
              const field = i < 0 ? line : line.slice(0, i);
              let value = i < 0 ? "" : line.slice(i + 1);
              if (value.startsWith(" ")) value = value.slice(1);
              if (field === "event") name = value;
              else if (field === "data") data.push(value);
              else if (field === "id") lastId = value;
              else if (field === "retry" && /^\d+$/.test(value)) retryMs = Number(value);
            }
          }
        }
      } catch (e) {
        if (signal.aborted) return;
      }
      await sleep(retryMs);
    }
  }

  function sleep(ms) { return new Promise(resolve => setTimeout(resolve, ms)); }

  // --- formatting (the same rules as core/report.py, so the page and the HTML report agree) --------------------
  function formatValue(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (typeof v === "number") {
      if (Number.isNaN(v)) return "NaN";
      if (!Number.isFinite(v)) return v > 0 ? "∞" : "−∞";
      const mag = Math.abs(v);
      if (Number.isInteger(v) && mag < 1e15) return mag >= 10000 ? v.toLocaleString("en-US") : String(v);
      if (mag === 0) return "0";
      if (mag >= 1e-3 && mag < 1e4) return String(Number(v.toPrecision(4)));
      if (mag >= 1e4 && mag < 1e12) return v.toLocaleString("en-US", {maximumFractionDigits: 0});
      return v.toExponential(3);
    }
    if (Array.isArray(v)) {
      if (v.length && v.every(Array.isArray)) return `[${v.length}×${v[0].length} values]`;
      const one = x => (x && typeof x === "object" && !Array.isArray(x)) ? `{${formatValue(x)}}` : formatValue(x);
      if (v.length <= 8) return v.map(one).join(", ");
      return `${v.slice(0, 3).map(one).join(", ")}, …, ${one(v[v.length - 1])} (${v.length} values)`;
    }
    if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}=${formatValue(x)}`).join(", ");
    return String(v);
  }

  const isRecords = v => Array.isArray(v) && v.length > 0 && v.every(x => x && typeof x === "object" && !Array.isArray(x));
  const isDict = v => v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length > 0;

  function resultTables(result) {
    const summary = {title: "Result", columns: ["key", "value"], rows: []}, records = [];
    result = Object.fromEntries(Object.entries(result || {}).filter(([k]) => k !== "summary"));  // shown first
    (function walk(value, path) {
      if (isDict(value)) {
        for (const [k, v] of Object.entries(value)) walk(v, path ? `${path}.${k}` : k);
      } else if (isRecords(value)) {
        const columns = [];
        for (const rec of value) for (const k of Object.keys(rec)) if (!columns.includes(k)) columns.push(k);
        records.push({title: path, columns: columns, rows: value.map(rec => columns.map(c => formatValue(rec[c])))});
      } else {
        summary.rows.push([path || "value", formatValue(value)]);
      }
    })(result || {}, "");
    return (summary.rows.length ? [summary] : []).concat(records);
  }

  function flatRows(data) {
    const rows = [];
    (function walk(value, path) {
      if (isDict(value)) for (const [k, v] of Object.entries(value)) walk(v, path ? `${path}.${k}` : k);
      else rows.push([path, formatValue(value)]);
    })(data || {}, "");
    return rows;
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const c of children || []) node.append(c);
    return node;
  }

  function tableNode(table, cls) {
    const head = el("tr", {}, table.columns.map(c => el("th", {textContent: c})));
    const body = table.rows.map(row => el("tr", {}, row.map((cell, i) =>
      el("td", {textContent: cell, className: i > 0 && /^[−\-\d.,e+∞]+$/.test(cell) ? "num" : ""}))));
    const named = table.columns.some(Boolean);  // key/value pairs need no header row
    return el("table", {className: cls}, [el("caption", {textContent: table.title}),
                                          ...(named ? [el("thead", {}, [head])] : []), el("tbody", {}, body)]);
  }

  function progressBar(fraction) {
    const bar = el("div", {className: "bar"});
    bar.style.width = `${(fraction * 100).toFixed(1)}%`;
    return el("div", {className: "progress mini"}, [bar]);
  }

  function badge(status) { return el("span", {className: "badge " + status, textContent: status}); }

  function when(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }

  /* A summary table cell: a number, text, or a spread over seeds {mean, sd, n} (same rules as core/report.py). */
  function formatCell(c) {
    if (c && typeof c === "object" && !Array.isArray(c) && "mean" in c) {
      return c.sd === null || c.sd === undefined ? formatValue(c.mean)
        : `${formatValue(c.mean)} ± ${formatValue(c.sd)} (n=${c.n})`;
    }
    return formatValue(c);
  }

  /* The job's answer, read before anything else: headline, verdict with its statistic, comparison, key figures. */
  function answerNodes(summary) {
    const v = summary.verdict;
    return {
      headline: summary.headline,
      verdict: {className: "verdict " + v.outcome,
                text: `${v.outcome} · ${v.statistic} = ${formatValue(v.value)} · ${v.rule}`},
      comparison: tableNode({title: "Comparison", columns: summary.table.columns,
                             rows: summary.table.rows.map(row => row.map(formatCell))}, "grid summary-table"),
      figures: tableNode({title: "", columns: ["figure", "value"],
                          rows: Object.entries(summary.figures).map(([k, x]) => [k, formatValue(x)])}, "kv"),
    };
  }

  // --- charts: one per metric, the arms (or settings) of the job overlaid, drawn with uPlot ------------------------
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];

  const SEED_PART = /(^|\/)seed\d+(\/|$)/;

  class ChartSet {
    constructor(root, empty, group) {
      this.root = root; this.empty = empty; this.group = group || groupNames;
      this.series = new Map(); this.groups = new Map(); this.plots = new Map(); this.dirty = new Set();
      this.frame = null; this.points = 0;
    }

    clear() {
      for (const p of this.plots.values()) p.plot.destroy();
      this.series.clear(); this.groups.clear(); this.plots.clear(); this.dirty.clear(); this.points = 0;
      this.root.replaceChildren(this.empty);
    }

    series_(name) {
      let s = this.series.get(name);
      if (!s) {
        s = {x: [], y: [], seeds: new Map(), spread: new Map()};
        this.series.set(name, s);
        this.groups = this.group([...this.series.keys()]);
        for (const g of this.groups.values()) this.dirty.add(g.chart);
      }
      this.dirty.add(this.groups.get(name).chart);
      if (this.frame === null) this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); });
      return s;
    }

    /* One point of a line. A name with a part "seed<N>" ("adam/x1/seed2/test_loss") is one seed of the line named
       without it: the seeds of a line draw as a min–max band, and as its line too when it has no points of its own
       (their mean). */
    add(name, step, value) {
      this.points += 1;
      const line = name.replace(SEED_PART, (m, before, after) => before && after ? "/" : "");
      if (line === name) {
        const s = this.series_(name);
        s.x.push(step); s.y.push(value);
        return;
      }
      const seeds = this.series_(line).seeds;
      if (!seeds.has(step)) seeds.set(step, []);
      seeds.get(step).push(value);
    }

    /* The band around a line at one step, given rather than drawn from seeds (a study's spread over its seeds). */
    spread(name, step, lo, hi) { this.series_(name).spread.set(step, [lo, hi]); }

    /* The grouping again, now that the steps are known (groupNames turns charts of one step around): the charts
       whose members moved are redrawn. */
    regroup() {
      const steps = name => { const s = this.series.get(name); return s.x.length ? s.x : [...s.seeds.keys()]; };
      const groups = this.group([...this.series.keys()], steps);
      for (const [name, g] of groups) {
        const was = this.groups.get(name);
        if (!was || was.chart !== g.chart || was.label !== g.label) {
          this.dirty.add(g.chart);
          if (was) this.dirty.add(was.chart);
        }
      }
      this.groups = groups;
    }

    /* Draw now what is pending (a page about to say it is done draws first). */
    flush() {
      if (this.frame !== null) { cancelAnimationFrame(this.frame); this.frame = null; }
      if (this.dirty.size) this.draw();
    }

    /* The chart's lines as {label, line, band}: step -> value and step -> [lo, hi] (empty: no band). */
    members(chart) {
      const mean = xs => xs.reduce((a, b) => a + b, 0) / xs.length;
      return [...this.groups].filter(([, g]) => g.chart === chart).map(([name, g]) => {
        const s = this.series.get(name);
        const line = new Map(s.x.length ? s.x.map((x, i) => [x, s.y[i]]) : [...s.seeds].map(([x, v]) => [x, mean(v)]));
        const band = new Map(s.spread);
        for (const [x, v] of s.seeds) if (v.length > 1) band.set(x, [Math.min(...v), Math.max(...v)]);
        return {label: g.label, line, band, banded: band.size > 0};
      }).sort((a, b) => a.label.localeCompare(b.label, "en", {numeric: true}));
    }

    draw() {
      if (typeof uPlot === "undefined") {
        this.root.replaceChildren(el("p", {className: "muted", textContent: "Charts need uPlot: run make install."}));
        return;
      }
      this.regroup();
      const charts = new Set([...this.groups.values()].map(g => g.chart));
      for (const [chart, p] of this.plots) if (!charts.has(chart)) { p.plot.destroy(); p.node.remove(); this.plots.delete(chart); }
      for (const chart of [...charts].sort()) {
        if (!this.dirty.has(chart)) continue;
        const members = this.members(chart);
        const xs = [...new Set(members.flatMap(m => [...m.line.keys(), ...m.band.keys()]))].sort((a, b) => a - b);
        const column = (values, pick) => xs.map(x => values.has(x) ? pick(values.get(x)) : null);
        // per member its line, then (banded) its band's upper and lower edges
        const data = [xs, ...members.flatMap(m => m.banded
          ? [column(m.line, v => v), column(m.band, v => v[1]), column(m.band, v => v[0])] : [column(m.line, v => v)])];
        const look = {logX: spansDecades(xs, 2), logY: spansDecades(data.slice(1).flat(), 3),
                      dots: members.map(m => m.line.size <= FEW_POINTS)};
        const shape = members.map(m => m.label + (m.banded ? "+band" : "")).join("\n") + "|" + JSON.stringify(look);
        const old = this.plots.get(chart);
        if (old && old.shape === shape) {
          old.plot.setData(data);
          fitX(old.plot, xs, look.logX);
          noteValues(old.node, members);
          continue;
        }
        if (old) { old.plot.destroy(); old.node.remove(); }
        const made = this.create(chart, members, data, look, shape);
        fitX(made.plot, xs, look.logX);
        this.plots.set(chart, made);
      }
      this.dirty.clear();
      this.empty.remove();
    }

    create(chart, members, data, look, shape) {
      const note = el("p", {className: "note"});
      const node = el("figure", {className: "chart"}, [el("h3", {textContent: chart}), note]);
      node.setAttribute("aria-label", chart);
      node.dataset.series = String(members.length);
      node.dataset.bands = String(members.filter(m => m.banded).length);
      node.dataset.scales = `${look.logX ? "log" : "linear"} x, ${look.logY ? "log" : "linear"} y`;
      const existing = [...this.root.querySelectorAll("figure.chart")].find(f => f.getAttribute("aria-label") > chart);
      this.root.insertBefore(node, existing || null);
      const width = () => Math.max(300, node.clientWidth - 14);
      const series = [], bands = [];
      members.forEach((m, i) => {
        const colour = PALETTE[i % PALETTE.length];
        // a line of a few points shows each as a dot: one point, or points far apart, would draw no line at all
        series.push({label: m.label, stroke: colour, width: 1.5, spanGaps: true,
                     points: {show: look.dots[i], size: 7, fill: colour}});
        if (!m.banded) return;
        const edge = which => ({label: `${m.label} ${which}`, stroke: colour + "55", width: 0.5, spanGaps: true,
                                points: {show: false}, edge: true});
        series.push(edge("max"), edge("min"));
        bands.push({series: [series.length - 1, series.length], fill: colour + "30"});  // uPlot counts the x series first
      });
      // y spans this chart's own data (a lone value padded around it; x: see fitX); ticks labelled to fit their axis
      const range = log => log ? undefined : (u, lo, hi) => padded(lo, hi);
      const axis = (log, recorded) => ({
        size: axisSize,
        ...(log ? {filter: thinDecades, grid: {filter: thinDecades}, ticks: {filter: thinDecades}} : {}),
        values: (u, ticks) => {
          const labels = tickLabels(ticks, log);
          node.dataset[recorded] = labels.filter(Boolean).join(" ");
          return labels;
        },
      });
      const plot = new uPlot({
        width: width(), height: node.classList.contains("wide") ? 480 : 260,
        scales: {x: {time: false, distr: look.logX ? 3 : 1}, y: {distr: look.logY ? 3 : 1, range: range(look.logY)}},
        axes: [{label: "step", ...axis(look.logX, "xTicks"), size: 50, incrs: STEP_INCRS}, axis(look.logY, "yTicks")],
        series: [{label: "step"}, ...series],
        bands: bands,
      }, data, node);
      noteValues(node, members);
      // the band edges are drawn as the band's outline only: their legend rows would repeat each line's label
      const rows = plot.root.querySelectorAll(".u-legend .u-series");
      series.forEach((sr, i) => { if (sr.edge && rows[i + 1]) rows[i + 1].style.display = "none"; });
      node.addEventListener("click", ev => {
        if (ev.target.closest(".u-legend")) return;
        node.classList.toggle("wide");
        plot.setSize({width: width(), height: node.classList.contains("wide") ? 480 : 260});
      });
      return {plot, node, shape};
    }
  }

  const FEW_POINTS = 40;

  /* Under the chart's title, the value of each line that has only one (a single point, or a constant): such a line
     is a dot or a flat stroke whose height the reader would otherwise read off the ticks. */
  function noteValues(node, members) {
    const single = members.filter(m => new Set(m.line.values()).size === 1);
    const value = m => formatValue(m.line.values().next().value);
    const text = members.length === 1 && single.length ? `${single[0].line.size > 1 ? "constant" : "value"} ${value(single[0])}`
      : single.length && single.length <= 6 ? single.map(m => `${m.label}: ${value(m)}`).join(" · ") : "";
    node.querySelector(".note").textContent = text;
    node.querySelector(".note").hidden = !text;
  }

  // --- what a job ran on: its model and dataset, linked to their pages when uploaded ------------------------------
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  function link(href, text, title) {
    const a = el("a", {href: href, textContent: text});
    if (title) a.title = title;
    return a;
  }

  /* params.model: a built-in name ("mlp"), or a spec {source: builtin | hf_config | uploaded}; absent for kinds that
     build their own network. */
  function modelNodes(model) {
    if (model === null || model === undefined) return [];
    if (typeof model === "string") return [model];
    if (model.source === "uploaded") return [link("/models/" + model.id, "model " + model.id.slice(0, 8), model.id)];
    if (model.source === "hf_config") {
      const name = (model.config && model.config.model_type) || "HF config";
      return model.weights ? [name + " + ", link("/models/" + model.weights, "weights " + model.weights.slice(0, 8),
                                                  model.weights)] : [name];
    }
    return [model.arch || model.source || "model"];
  }

  /* params.dataset: a built-in name ("digits") or an uploaded dataset's id. */
  function datasetNodes(dataset) {
    if (dataset === null || dataset === undefined) return [];
    if (typeof dataset === "string" && UUID_RE.test(dataset)) {
      return [link("/datasets/" + dataset, "dataset " + dataset.slice(0, 8), dataset)];
    }
    return [String(dataset)];
  }

  /* "mlp · digits", the uploaded parts as links; "—" when the job names neither. */
  function ranOn(params) {
    const parts = [modelNodes((params || {}).model), datasetNodes((params || {}).dataset)].filter(p => p.length);
    if (!parts.length) return ["—"];
    return parts.reduce((out, p, i) => out.concat(i ? [" · "] : [], p), []);
  }

  // --- the job list ------------------------------------------------------------------------------------------------
  function initIndex() {
    let limit = 50, timer = null;
    const tbody = $("#jobs tbody");
    const selected = new Map();  // job id -> kind: kept across refreshes

    function updateCompare() {
      const kinds = new Set(selected.values());
      $("#compare").disabled = selected.size < 2 || kinds.size !== 1;
      $("#compare").textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
    }

    function pick(job) {
      const box = el("input", {type: "checkbox", checked: selected.has(job.id), disabled: job.status !== "succeeded",
                               title: job.status === "succeeded" ? "select to compare" : "only succeeded jobs"});
      box.setAttribute("aria-label", "select " + job.id);
      box.addEventListener("change", () => {
        if (box.checked) selected.set(job.id, job.kind); else selected.delete(job.id);
        updateCompare();
      });
      return box;
    }

    async function fillKinds() {
      try {
        const kinds = await (await api("/v1/kinds")).json();
        for (const k of kinds) $("#filter-kind").append(el("option", {value: k.name, textContent: k.name}));
      } catch (e) { showError(e); }
    }

    async function refresh() {
      clearTimeout(timer);
      const q = new URLSearchParams({limit: String(limit)});
      if ($("#filter-status").value) q.set("status", $("#filter-status").value);
      if ($("#filter-kind").value) q.set("kind", $("#filter-kind").value);
      try {
        const page = await (await api("/v1/jobs?" + q)).json();
        showError(null);
        tbody.replaceChildren(...page.items.map(job => el("tr", {}, [
          el("td", {}, [pick(job)]),
          el("td", {}, [el("a", {href: "/jobs/" + job.id, textContent: job.id.slice(0, 8)}),
                        ...(job.study_id ? [" in ", link("/studies/" + job.study_id, "study " + job.study_id.slice(0, 8),
                                                         job.study_id)] : [])]),
          el("td", {textContent: job.kind}),
          el("td", {className: "ran-on"}, ranOn(job.params)),
          el("td", {}, [badge(job.status)]),
          el("td", {}, [progressBar(job.progress), `${Math.round(job.progress * 100)}%`]),
          el("td", {textContent: job.error ? `${job.error.type}: ${job.error.message}` : job.message}),
          el("td", {textContent: when(job.created_at)}),
        ])));
        $("#empty").hidden = page.items.length > 0;
        $("#more").hidden = !page.next_cursor || limit >= 500;
        $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
      } catch (e) { showError(e); }
      timer = setTimeout(refresh, REFRESH_MS);
    }

    $("#filter-status").addEventListener("change", refresh);
    $("#filter-kind").addEventListener("change", refresh);
    $("#more").addEventListener("click", () => { limit = Math.min(500, limit + 50); refresh(); });
    $("#compare").addEventListener("click", () => { location.href = "/compare?ids=" + [...selected.keys()].join(","); });
    initKeyForm(refresh);
    fillKinds();
    refresh();
  }

  // --- one job -----------------------------------------------------------------------------------------------------
  function initJob() {
    const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    const charts = new ChartSet($("#charts"), $("#no-metrics"));
    let controller = null, metricAttempt = null;

    function about(seconds) {
      if (seconds < 90) return `${Math.round(seconds)} s`;
      return seconds < 5400 ? `${Math.round(seconds / 60)} min` : `${(seconds / 3600).toFixed(1)} h`;
    }

    // "3rd in the gpu queue, ~4 min" while the job waits (empty otherwise)
    function queuePlace(job) {
      if (job.status !== "queued" || job.queue_position == null) return "";
      const n = job.queue_position;
      const suffix = (n % 100 >= 10 && n % 100 <= 20) ? "th" : ({1: "st", 2: "nd", 3: "rd"}[n % 10] || "th");
      return `${n}${suffix} in the ${job.queue} queue` + (job.eta_s == null ? "" : `, ~${about(job.eta_s)}`);
    }

    // The event stream says nothing of the queue: while queued, the job is read again every 2 s.
    async function watchQueue(signal) {
      while (!signal.aborted) {
        await new Promise(resolve => setTimeout(resolve, 2000));
        if (signal.aborted) return;
        const job = await (await api(`/v1/jobs/${id}`, {signal: signal})).json();
        $("#job-queue").textContent = queuePlace(job);
        if (job.status !== "queued") return;
      }
    }

    function renderStatus(s) {
      if (s.status !== "queued") $("#job-queue").textContent = "";
      $("#job-status").replaceChildren(badge(s.status));
      $("#job-bar").style.width = `${(s.progress * 100).toFixed(1)}%`;
      $("#job-progress").textContent = `${Math.round(s.progress * 100)}%`;
      $("#job-message").textContent = s.message;
      $("#cancel").hidden = TERMINAL.has(s.status);
    }

    function renderJob(job) {
      document.title = `gradlab · ${job.kind} · ${job.status}`;
      $("#job-kind").textContent = job.kind;
      renderStatus(job);
      const facts = [["id", job.id], ["attempt", job.attempt], ["device", `${job.device || "—"} (asked ${job.device_requested})`],
                     ["seed", job.seed], ["created", when(job.created_at)], ["started", when(job.started_at)],
                     ["finished", when(job.finished_at)], ["timeout", `${job.timeout_s} s`]];
      const ran = [["model", modelNodes(job.params.model)], ["dataset", datasetNodes(job.params.dataset)],
                   ["study", job.study_id ? [link("/studies/" + job.study_id, job.study_id, job.study_id)] : []]];
      $("#job-facts").replaceChildren(...facts.map(([k, v]) =>
        el("div", {}, [el("dt", {textContent: k}), el("dd", {textContent: String(v)})])),
        ...ran.filter(([, nodes]) => nodes.length).map(([k, nodes]) => el("div", {}, [el("dt", {textContent: k}),
                                                                                  el("dd", {}, nodes)])));
      $("#params").replaceChildren(tableNode({title: "", columns: ["param", "value"], rows: flatRows(job.params)}, "kv"));
      if (job.error) {
        $("#job-error").replaceChildren(el("div", {className: "error", textContent: `${job.error.type}: ${job.error.message}`}));
      }
    }

    function clearCharts() {
      charts.clear();
      $("#metric-count").textContent = "";
    }

    function addMetric(m) {
      charts.add(m.name, m.step, m.value);
      $("#metric-count").textContent = `(${charts.points} points drawn)`;
    }

    function renderAnswer(summary) {
      $("#answer").hidden = !summary;
      if (!summary) return;
      const a = answerNodes(summary);
      $("#headline").textContent = a.headline;
      $("#verdict").className = a.verdict.className;
      $("#verdict").textContent = a.verdict.text;
      $("#comparison").replaceChildren(a.comparison);
      $("#figures").replaceChildren(a.figures);
    }

    async function renderArtifacts() {
      const arts = await (await api(`/v1/jobs/${id}/artifacts`)).json();
      const links = [], images = [];
      for (const a of arts) {
        if (a.media_type === "image/png") {
          const blob = await (await api(a.url, {headers: {Accept: "image/png"}})).blob();
          const fig = el("figure", {title: "click: full size"}, [el("img", {src: URL.createObjectURL(blob), alt: a.name}),
                                 el("figcaption", {textContent: `${a.name} · ${formatValue(a.size)} bytes`})]);
          fig.addEventListener("click", () => fig.classList.toggle("full"));
          images.push(fig);
        }
        const link = el("a", {href: a.url, textContent: a.name});
        link.addEventListener("click", async ev => {
          ev.preventDefault();
          try {
            const blob = await (await api(a.url, {headers: {Accept: a.media_type}})).blob();
            const tmp = el("a", {href: URL.createObjectURL(blob), download: a.name});
            document.body.append(tmp); tmp.click(); tmp.remove();
          } catch (e) { showError(e); }
        });
        links.push(el("li", {}, [link, ` (${a.media_type}, ${formatValue(a.size)} bytes)`]));
      }
      $("#artifact-links").replaceChildren(...(links.length ? links : [el("li", {className: "muted", textContent: "none"})]));
      $("#artifact-images").replaceChildren(...images);
    }

    async function loadMetrics(signal) {
      // every series downsampled by the server (min and max per bucket): at most 2,000 points a line
      const page = await (await api(`/v1/jobs/${id}/metrics?points=2000`, {signal: signal})).json();
      page.items.forEach(addMetric);
    }

    async function load() {
      if (controller) controller.abort();
      controller = new AbortController();
      const signal = controller.signal;
      delete document.body.dataset.state;
      showError(null);
      try {
        const first = await (await api(`/v1/jobs/${id}`)).json();
        renderJob(first);
        $("#job-queue").textContent = queuePlace(first);
        if (first.status === "queued") watchQueue(signal).catch(() => {});
        clearCharts();
        metricAttempt = null;
        if (TERMINAL.has(first.status)) {
          await loadMetrics(signal);  // nothing will change: a few plain pages instead of a stream
        } else {
          await streamEvents(`/v1/jobs/${id}/events`, ev => {
            if (ev.event === "status") {
              if (metricAttempt !== null && ev.data.attempt !== metricAttempt) clearCharts();  // a retry starts over
              metricAttempt = ev.data.attempt;
              renderStatus(ev.data);
            } else if (ev.event === "metric") {
              addMetric(ev.data);
            }
          }, signal);
        }
        if (signal.aborted) return;
        const job = await (await api(`/v1/jobs/${id}`)).json();
        renderJob(job);
        renderAnswer(job.result && job.result.summary);
        $("#result").replaceChildren(...(job.result
          ? resultTables(job.result).map(t => tableNode(t, "grid result-table"))
          : [el("p", {className: "muted", textContent: `No result: the job ${job.status}.`})]));
        await renderArtifacts();
        charts.flush();
        document.body.dataset.state = "done";
      } catch (e) {
        if (!signal.aborted) showError(e);
      }
    }

    $("#cancel").addEventListener("click", async () => {
      try { renderStatus(await (await api(`/v1/jobs/${id}/cancel`, {method: "POST"})).json()); }
      catch (e) { showError(e); }
    });
    initKeyForm(load);
    load();
  }

  // --- a study's answer: which setting wins on the figure the verdicts rest on, by how much, with its CI -----------
  const HIGHER_BETTER = /accuracy|gain|covered|coverage|share|likelihood/i;
  const LOWER_BETTER = /error|loss|violation|diff|kl|time|bytes|memory|norm|elbo/i;

  /* Which way a figure is better, read from its name (errors, losses, violations, times down; accuracies and gains
     up); null when the name does not say (a ratio to a target, a coefficient). */
  function betterWay(name) {
    return HIGHER_BETTER.test(name) ? "higher" : LOWER_BETTER.test(name) ? "lower" : null;
  }

  const meanCi = f => !f || f.mean === null ? "—" : f.ci95 === null ? formatValue(f.mean)
    : `${formatValue(f.mean)} ± ${formatValue(f.ci95)}`;

  /* A paired difference from the baseline, and whether its 95 % CI leaves out 0. */
  function deltaText(d) {
    if (!d || !d.n) return "no seeds in common with the baseline";
    const sign = d.mean > 0 ? "+" : "";
    if (d.ci95 === null) return `Δ ${sign}${formatValue(d.mean)} (one seed: no CI)`;
    const clear = Math.abs(d.mean) > d.ci95;
    return `Δ ${sign}${formatValue(d.mean)} ± ${formatValue(d.ci95)} (95 % CI over ${d.n} paired seeds` +
      (clear ? ", excludes 0)" : "; includes 0: within noise)");
  }

  /* The sentence a study page leads with, and the row it names (null when no setting is ahead). */
  function studyAnswer(c, name) {
    const rows = c.rows.filter(r => r.figures[name] && r.figures[name].mean !== null);
    const base = c.rows.find(r => r.setting === c.baseline);
    if (!rows.length) return {text: `No setting has a ${name} yet.`, best: null};
    if (rows.length === 1) return {text: `${rows[0].label}: ${name} = ${meanCi(rows[0].figures[name])}.`, best: null};
    const way = betterWay(name), mean = r => r.figures[name].mean;
    const others = rows.filter(r => r !== base);
    if (!way) {
      const far = others.reduce((a, b) => Math.abs(mean(b) - mean(base)) > Math.abs(mean(a) - mean(base)) ? b : a);
      return {text: `On ${name}, ${far.label} differs most from the baseline ${base.label}: ${meanCi(far.figures[name])} ` +
                    `against ${meanCi(base.figures[name])}; ${deltaText(far.paired[name])}.`, best: null};
    }
    const better = (a, b) => way === "lower" ? mean(b) < mean(a) : mean(b) > mean(a);
    const best = rows.reduce((a, b) => better(a, b) ? b : a);
    if (best === base || !base || !base.figures[name] || base.figures[name].mean === null) {
      const next = others.reduce((a, b) => better(a, b) ? b : a);
      return {text: `${best.label}${best === base ? " (the baseline)" : ""} wins on ${name} (${way} is better): ` +
                    `${meanCi(best.figures[name])}; the next best, ${next.label}, has ${meanCi(next.figures[name])}` +
                    (best === base ? `, ${deltaText(next.paired[name])}.` : "."), best: best};
    }
    return {text: `${best.label} wins on ${name} (${way} is better): ${meanCi(best.figures[name])} against the baseline ` +
                  `${base.label}'s ${meanCi(base.figures[name])}, ${deltaText(best.paired[name])}.`, best: best};
  }

  /* The comparison at a glance: per setting its jobs, verdicts, the headline figure and its paired difference. */
  function studyTable(c, name, best) {
    const columns = ["setting", "jobs ok", "verdicts", ...(name ? [name, "Δ vs baseline"] : [])];
    const table = tableNode({title: "", columns: columns, rows: c.rows.map(r => [
      r.label + (r.setting === c.baseline ? " (baseline)" : ""), `${r.succeeded}/${r.jobs}`,
      Object.entries(r.verdicts).map(([v, n]) => `${n} ${v}`).join(", ") || "—",
      ...(name ? [meanCi(r.figures[name]), r.paired ? deltaText(r.paired[name]) : "—"] : [])])}, "grid study-table");
    c.rows.forEach((r, i) => { if (r === best) table.tBodies[0].rows[i].className = "best"; });
    return table;
  }

  /* Every figure, a row each and a column per setting (settings are few, figures many): mean ± CI, then Δ. */
  function figureTable(c) {
    return tableNode({title: "", columns: ["figure", ...c.rows.map(r => r.label + (r.setting === c.baseline ? " (baseline)" : ""))],
      rows: c.figures.map(f => [f, ...c.rows.map(r => meanCi(r.figures[f]) +
        (r.paired && r.paired[f] && r.paired[f].n ? `\nΔ ${formatValue(r.paired[f].mean)}` +
          (r.paired[f].ci95 === null ? "" : ` ± ${formatValue(r.paired[f].ci95)}`) : ""))])}, "grid figure-table");
  }

  /* A study's state, its answer, the comparison at a glance and in full, and its jobs. */
  function renderStudy(s, statistic) {
    document.title = `gradlab · study · ${s.kind} · ${s.status}`;
    $("#study-kind").textContent = `${s.kind} study`;
    $("#study-status").replaceChildren(badge(s.status));
    $("#study-bar").style.width = `${(s.progress * 100).toFixed(1)}%`;
    $("#study-counts").textContent = `${s.jobs.length} jobs: ` +
      Object.entries(s.counts).map(([k, n]) => `${n} ${k}`).join(", ");
    $("#cancel").hidden = TERMINAL.has(s.status);
    const c = s.comparison, headline = c.figures.includes(statistic) ? statistic : c.figures[0];
    const answer = headline ? studyAnswer(c, headline) : null;
    $("#study-answer").textContent = answer ? answer.text : "";
    $("#comparison").replaceChildren(studyTable(c, headline, answer && answer.best));
    $("#figure-table").replaceChildren(figureTable(c));
    $("#all-figures").hidden = !c.figures.length;
    const label = j => s.settings[j.setting].label;
    $("#children tbody").replaceChildren(...s.jobs.map(j => el("tr", {}, [
      el("td", {}, [el("a", {href: "/jobs/" + j.id, textContent: j.id.slice(0, 8)})]),
      el("td", {textContent: label(j)}), el("td", {textContent: String(j.seed)}), el("td", {}, [badge(j.status)])])));
  }

  // --- one study ---------------------------------------------------------------------------------------------------
  function initStudy() {
    const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    const SEP = "\u0000";  // name = line label + SEP + metric: one chart per metric, a line (and band) per setting
    const charts = new ChartSet($("#charts"), $("#no-metrics"), names => new Map(names.map(n => {
      const [label, metric] = n.split(SEP);
      return [n, {chart: metric, label: label}];
    })));
    let study = null, timer = null, drawn = null, drawnFor = -1;  // the metric drawn, and for how many jobs

    let statistic = null;  // the figure the children's verdicts rest on, read from one finished child

    async function readStatistic(s) {
      const first = s.jobs.find(j => j.status === "succeeded");
      if (!first) return;
      const job = await (await api(`/v1/jobs/${first.id}`)).json();
      statistic = (((job.result || {}).summary || {}).verdict || {}).statistic || null;
    }

    async function metricNames(s) {
      const first = s.jobs.find(j => j.status === "succeeded");
      if (!first) return [];
      const page = await (await api(`/v1/jobs/${first.id}/metrics?points=2`)).json();
      return [...new Set(page.items.map(m => m.name))].sort();
    }

    async function drawCurves(metric) {
      charts.clear();
      drawn = metric;
      // per setting the mean over its seeds and their min–max band, 200 points a line, in one answer
      const q = new URLSearchParams({name: metric, points: "200"});
      const page = await (await api(`/v1/studies/${id}/bands?${q}`)).json();
      for (const b of page.settings) {
        const label = b.label + (b.setting === study.comparison.baseline ? " (baseline)" : "");
        b.steps.forEach((step, i) => {
          charts.add(label + SEP + metric, step, b.mean[i]);
          if (b.n[i] > 1) charts.spread(label + SEP + metric, step, b.min[i], b.max[i]);
        });
      }
      charts.flush();
    }

    async function refresh() {
      clearTimeout(timer);
      try {
        study = await (await api(`/v1/studies/${id}`)).json();
        showError(null);
        if (statistic === null) await readStatistic(study);
        renderStudy(study, statistic);
        if (!$("#metric").options.length) {
          const names = await metricNames(study);
          $("#metric").replaceChildren(...names.map(n => el("option", {value: n, textContent: n})));
        }
        const succeeded = study.counts.succeeded || 0;
        if ($("#metric").value && (drawn !== $("#metric").value || drawnFor !== succeeded)) {
          drawnFor = succeeded;
          await drawCurves($("#metric").value);
        }
        if (TERMINAL.has(study.status)) document.body.dataset.state = "done";
        else timer = setTimeout(refresh, REFRESH_MS);
      } catch (e) { showError(e); }
    }

    $("#metric").addEventListener("change", () => drawCurves($("#metric").value).catch(showError));
    $("#cancel").addEventListener("click", async () => {
      try { renderStudy(await (await api(`/v1/studies/${id}/cancel`, {method: "POST"})).json(), statistic); }
      catch (e) { showError(e); }
    });
    $("#csv").addEventListener("click", async () => {
      try {
        const blob = await (await api(`/v1/studies/${id}/comparison.csv`, {headers: {Accept: "text/csv"}})).blob();
        const tmp = el("a", {href: URL.createObjectURL(blob), download: `study-${id}.csv`});
        document.body.append(tmp); tmp.click(); tmp.remove();
      } catch (e) { showError(e); }
    });
    initKeyForm(refresh);
    refresh();
  }

  // --- jobs side by side ------------------------------------------------------------------------------------------
  function initCompare() {
    const ids = (new URLSearchParams(location.search).get("ids") || "").split(",").filter(Boolean).slice(0, 12);
    const SEP = "\u0000";  // name = job + SEP + metric: charts as on a job page, a line per job (and arm)
    const charts = new ChartSet($("#charts"), $("#no-metrics"), names => {
      const byMetric = groupNames([...new Set(names.map(n => n.split(SEP)[1]))]);
      return new Map(names.map(n => {
        const [job, metric] = n.split(SEP), g = byMetric.get(metric);
        return [n, {chart: g.chart, label: g.label === metric ? job : `${job} ${g.label}`}];
      }));
    });

    async function load() {
      showError(null);
      charts.clear();
      try {
        const jobs = await Promise.all(ids.map(async id => (await api(`/v1/jobs/${id}`)).json()));
        const kinds = new Set(jobs.map(j => j.kind));
        if (kinds.size > 1) throw new Error(`jobs of one kind compare; these are ${[...kinds].join(", ")}`);
        $("#compare-title").textContent = `${jobs.length} ${jobs[0] ? jobs[0].kind : ""} jobs side by side`;
        $("#answers").replaceChildren(...jobs.map(job => {
          const head = el("h3", {}, [el("a", {href: "/jobs/" + job.id, textContent: job.id.slice(0, 8)}),
                                     ` seed ${job.seed} `, badge(job.status)]);
          const summary = job.result && job.result.summary;
          if (!summary) return el("section", {className: "answer"}, [head, el("p", {className: "muted", textContent: "no summary"})]);
          const a = answerNodes(summary);
          return el("section", {className: "answer"}, [head, el("p", {className: "headline", textContent: a.headline}),
                                                        el("p", {className: a.verdict.className, textContent: a.verdict.text}),
                                                        a.comparison]);
        }));
        await Promise.all(jobs.map(async job => {
          const page = await (await api(`/v1/jobs/${job.id}/metrics?points=1000`)).json();
          for (const m of page.items) charts.add(job.id.slice(0, 8) + SEP + m.name, m.step, m.value);
        }));
        charts.flush();
        $("#metric-count").textContent = `(${charts.points} points drawn)`;
        document.body.dataset.state = "done";
      } catch (e) { showError(e); }
    }

    initKeyForm(load);
    load();
  }

  /* A dataset (/datasets/{id}): its state, then its preview. The preview's parts are drawn by their shape, not
     their names: rows of values as a table, columns of equal-length lists (statistics) as a table with a row per
     column, a flat object (label balance) as key/value pairs, anything else as JSON. */
  function previewNode(name, value) {
    const isScalar = v => v === null || typeof v !== "object";
    const cell = v => isScalar(v) ? formatValue(v) : JSON.stringify(v);
    if (Array.isArray(value) && value.length && value.every(Array.isArray)) {
      const width = Math.max(...value.map(r => r.length));
      return tableNode({title: name, columns: [...Array(width).keys()].map(String),
                        rows: value.map(r => r.map(cell))}, "grid");
    }
    if (Array.isArray(value) && value.length && value.every(v => v && typeof v === "object" && !Array.isArray(v))) {
      const columns = [...new Set(value.flatMap(Object.keys))];
      return tableNode({title: name, columns: columns, rows: value.map(r => columns.map(c => cell(r[c])))}, "grid");
    }
    if (value && typeof value === "object" && !Array.isArray(value)) {
      const lists = Object.values(value);
      if (lists.length && lists.every(Array.isArray) && lists.every(l => l.length === lists[0].length)) {
        const keys = Object.keys(value);
        return tableNode({title: name, columns: ["column", ...keys],
                          rows: lists[0].map((_, i) => [String(i), ...keys.map(k => cell(value[k][i]))])}, "grid");
      }
      return tableNode({title: name, columns: ["", ""],
                        rows: Object.entries(value).map(([k, v]) => [k, cell(v)])}, "kv");
    }
    return el("p", {}, [el("strong", {textContent: name + ": "}), cell(value)]);
  }

  /* An arrays dataset's preview, however wide: its shape and dtypes, the range of its columns' statistics, the label
     balance, and a few rows; the per-column statistics on demand (a table of a row per column, folded when wide). */
  function arraysPreview(p) {
    const stats = p.stats || [], shown = p.columns_shown || stats.length;
    const tally = new Map();
    for (const c of p.columns || []) tally.set(c.source_dtype || "—", (tally.get(c.source_dtype || "—") || 0) + 1);
    const span = key => {
      const [lo, hi] = extent(stats.map(s => s[key]));
      return lo === Infinity ? "—" : lo === hi ? formatValue(lo) : `${formatValue(lo)} … ${formatValue(hi)}`;
    };
    const over = shown < p.shape[1] ? ` (the first ${shown} columns)` : "";
    const facts = [
      ["shape", `${formatValue(p.shape[0])} rows × ${formatValue(p.shape[1])} columns`],
      ["stored as", Object.entries(p.dtypes || {}).map(([k, t]) => `${k} ${t}`).join(", ")],
      ["source dtypes" + over, [...tally].map(([t, n]) => `${t} × ${n}`).join(", ")],
      ["min … max" + over, stats.length ? `${formatValue(extent(stats.map(st => st.min))[0])} … ${formatValue(extent(stats.map(st => st.max))[1])}` : "—"],
      ["column means" + over, span("mean")],
      ["column std" + over, span("std")],
    ];
    if (p.label_column) facts.push(["label column", p.label_column]);
    if (p.distinct_labels !== undefined) facts.push(["distinct labels", String(p.distinct_labels)]);
    const nodes = [tableNode({title: "arrays", columns: ["", ""], rows: facts}, "kv fit")];
    if (p.label_balance) {
      const labels = Object.entries(p.label_balance);
      // a few labels side by side (label above its count); many as a list folded away
      const table = labels.length <= 16
        ? tableNode({title: "label balance", columns: ["label", ...labels.map(([k]) => k)],
                     rows: [["rows", ...labels.map(([, n]) => formatValue(n))]]}, "grid fit")
        : el("details", {}, [el("summary", {textContent: `label balance: ${labels.length} labels`}),
                             tableNode({title: "", columns: ["label", "rows"], rows: labels.map(([k, n]) => [k, formatValue(n)])}, "kv fit")]);
      nodes.push(table);
    }
    const perColumn = tableNode({title: "", columns: ["column", "source dtype", "min", "max", "mean", "std"],
      rows: stats.map((st, i) => [st.column, (p.columns[i] || {}).source_dtype || "—",
                                 ...["min", "max", "mean", "std"].map(k => formatValue(st[k]))])}, "grid");
    nodes.push(el("details", {open: stats.length <= 12}, [el("summary", {textContent: `per column: ${stats.length} columns`}),
                                                           perColumn]));
    const samples = p.sample_rows || [];
    if (samples.length) {
      const labelled = samples.some(r => "y" in r);
      nodes.push(tableNode({title: "first rows", columns: ["row", p.shape[1] > 16 ? `x (the first 16 of ${formatValue(p.shape[1])})` : "x", ...(labelled ? ["y"] : [])],
        rows: samples.map((r, i) => [String(i + 1), r.x.slice(0, 16).map(formatValue).join(", ") + (r.x.length > 16 ? ", …" : ""),
                                     ...(labelled ? [formatValue(r.y)] : [])])}, "grid fit"));
    }
    return nodes;
  }

  function initDataset() {
    const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    let timer = null;

    function render(ds) {
      document.title = `gradlab · dataset · ${ds.filename} · ${ds.status}`;
      $("#dataset-name").textContent = ds.filename;
      $("#dataset-status").replaceChildren(badge(ds.status));
      $("#dataset-reason").hidden = !ds.reason;
      $("#dataset-reason").textContent = ds.reason || "";
      const facts = [["id", ds.id], ["kind", ds.kind], ["format", ds.format], ["rows", ds.rows],
                     ["columns", ds.columns], ["labels", ds.has_labels === null ? null : ds.has_labels ? "yes" : "no"],
                     ["uploaded bytes", ds.upload_size], ["stored bytes", ds.size], ["sha256", ds.sha256],
                     ["created", when(ds.created_at)]];
      $("#dataset-facts").replaceChildren(...facts.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) =>
        el("div", {}, [el("dt", {textContent: k}), el("dd", {textContent: typeof v === "number" ? formatValue(v) : v})])));
      if (ds.preview) {
        $("#preview").replaceChildren(...(ds.preview.kind === "arrays" && ds.preview.shape ? arraysPreview(ds.preview)
          : Object.entries(ds.preview).map(([k, v]) => previewNode(k, v))));
      }
    }

    async function load() {
      clearTimeout(timer);
      try {
        const ds = await (await api(`/v1/datasets/${encodeURIComponent(id)}`)).json();
        showError(null);
        render(ds);
        if (ds.status === "ready" || ds.status === "rejected") document.body.dataset.state = "done";
        else timer = setTimeout(load, REFRESH_MS);
      } catch (e) { showError(e); }
    }

    initKeyForm(load);
    load();
  }

  /* An uploaded model (/models/{id}): what it is, how a job names it, and its tensors (folded when many). */
  function initModel() {
    const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());

    async function load() {
      try {
        const m = await (await api(`/v1/models/${encodeURIComponent(id)}`)).json();
        showError(null);
        document.title = `gradlab · model · ${m.filename}`;
        $("#model-name").textContent = `${m.model_type} · ${m.filename}`;
        const facts = [["id", m.id], ["format", m.format], ["task", m.task], ["parameters", formatValue(m.n_params)],
                       ["tensors", formatValue(m.n_tensors)], ["weights", m.has_weights ? `${formatValue(m.weights_size)} bytes` : "none"],
                       ["weights sha256", m.weights_sha256], ["created", when(m.created_at)]];
        $("#model-facts").replaceChildren(...facts.filter(([, v]) => v !== null && v !== undefined).map(([k, v]) =>
          el("div", {}, [el("dt", {textContent: k}), el("dd", {textContent: String(v)})])));
        $("#model-use").textContent = JSON.stringify(m.use_as, null, 2);
        const layers = m.layers || [];
        $("#layer-count").textContent = `(${formatValue(layers.length)})`;
        const table = tableNode({title: "", columns: ["tensor", "shape"],
                                 rows: layers.map(l => [l.name, l.shape.join(" × ") || "scalar"])}, "grid");
        $("#layers").replaceChildren(layers.length <= 30 ? table
          : el("details", {}, [el("summary", {textContent: `${formatValue(layers.length)} tensors`}), table]));
        document.body.dataset.state = "done";
      } catch (e) { showError(e); }
    }

    initKeyForm(load);
    load();
  }

  // --- the lists of studies, datasets and models (listing.html) --------------------------------------------------
  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i ? `${n.toFixed(n < 10 ? 1 : 0)} ${units[i]}` : `${n} B`;
  }

  function shape(ds) {
    if (ds.rows === null || ds.rows === undefined) return "—";
    return `${formatValue(ds.rows)} rows` + (ds.columns ? ` × ${formatValue(ds.columns)}` : "");
  }

  /* Each list: its API path and, per column of listing.html, the cell's nodes for one item. */
  const LISTINGS = {
    studies: {path: "/v1/studies", cells: s => [
      [link("/studies/" + s.id, s.id.slice(0, 8), s.id)], [s.kind], [badge(s.status)],
      [progressBar(s.progress), `${Math.round(s.progress * 100)}%`],
      [`${s.settings.length} × ${s.seeds.length} (${s.jobs} jobs)`], [when(s.created_at)]]},
    datasets: {path: "/v1/datasets", cells: d => [
      [link("/datasets/" + d.id, d.id.slice(0, 8), d.id)], [d.filename], [badge(d.status)],
      [d.kind || (d.status === "rejected" ? d.reason || "" : "—")], [shape(d)], [bytes(d.size ?? d.upload_size)],
      [when(d.created_at)]]},
    models: {path: "/v1/models", cells: m => [
      [link("/models/" + m.id, m.id.slice(0, 8), m.id)], [m.filename], [m.model_type || m.format],
      [formatValue(m.n_params)], [m.has_weights ? bytes(m.weights_size) : "none"], [when(m.created_at)]]},
  };

  function initListing(listing) {
    let limit = 50, timer = null;
    const filter = $("#filter");

    async function refresh() {
      clearTimeout(timer);
      const q = new URLSearchParams({limit: String(limit)});
      if (filter.value) q.set(filter.dataset.param, filter.value);
      try {
        const page = await (await api(listing.path + "?" + q)).json();
        showError(null);
        $("#items tbody").replaceChildren(...page.items.map(item =>
          el("tr", {}, listing.cells(item).map(nodes => el("td", {}, nodes)))));
        $("#empty").hidden = page.items.length > 0;
        $("#more").hidden = !page.next_cursor || limit >= 500;
        $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
        document.body.dataset.state = "done";
      } catch (e) { showError(e); }
      timer = setTimeout(refresh, REFRESH_MS * 2);
    }

    filter.addEventListener("change", refresh);
    $("#more").addEventListener("click", () => { limit = Math.min(500, limit + 50); refresh(); });
    initKeyForm(refresh);
    refresh();
  }

  // an error outside a request (a chart that cannot be drawn) shows in the page's error box too
  window.addEventListener("error", ev => showError(ev.error || new Error(ev.message)));

  if (document.body.dataset.page === "index") initIndex();
  else if (document.body.dataset.page === "compare") initCompare();
  else if (document.body.dataset.page === "job") initJob();
  else if (document.body.dataset.page === "study") initStudy();
  else if (document.body.dataset.page === "dataset") initDataset();
  else if (document.body.dataset.page === "model") initModel();
  else if (LISTINGS[document.body.dataset.page]) initListing(LISTINGS[document.body.dataset.page]);
})();
