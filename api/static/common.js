/* What every gradlab page shares, on window.gradlab: the public HTTP API (with the API key typed into the header
   field, kept in localStorage and sent as "Authorization: Bearer …"), a job's Server-Sent Events, the formatting
   of values (the rules of core/report.py), DOM and table helpers, a job's answer, and the links to the model and
   dataset a job ran on. Loaded after charts.js and before the pages' own scripts (jobs.js, study.js, catalog.js),
   which start their page from <body data-page>.

   Events are read with fetch rather than EventSource because EventSource cannot send the Authorization header
   (the format and the Last-Event-ID resumption are the same). */
window.gradlab = (function () {
  "use strict";

  const KEY = "gradlab.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const REFRESH_MS = 2000;
  const $ = sel => document.querySelector(sel);

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

  // an error outside a request (a chart that cannot be drawn) shows in the page's error box too
  window.addEventListener("error", ev => showError(ev.error || new Error(ev.message)));

  return {TERMINAL, REFRESH_MS, $, api, showError, initKeyForm, streamEvents, formatValue, resultTables, flatRows, el,
          tableNode, progressBar, badge, when, answerNodes, link, modelNodes, datasetNodes, ranOn};
})();
