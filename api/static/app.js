/* The gradlab pages: the job list (/) and a job's live page (/jobs/{id}), both built on the public HTTP API.

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
    return el("table", {className: cls}, [el("caption", {textContent: table.title}), el("thead", {}, [head]),
                                          el("tbody", {}, body)]);
  }

  function progressBar(fraction) {
    const bar = el("div", {className: "bar"});
    bar.style.width = `${(fraction * 100).toFixed(1)}%`;
    return el("div", {className: "progress mini"}, [bar]);
  }

  function badge(status) { return el("span", {className: "badge " + status, textContent: status}); }

  function when(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }

  // --- the job list ------------------------------------------------------------------------------------------------
  function initIndex() {
    let limit = 50, timer = null;
    const tbody = $("#jobs tbody");

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
          el("td", {}, [el("a", {href: "/jobs/" + job.id, textContent: job.id.slice(0, 8)})]),
          el("td", {textContent: job.kind}),
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
    initKeyForm(refresh);
    fillKinds();
    refresh();
  }

  // --- one job -----------------------------------------------------------------------------------------------------
  function initJob() {
    const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
    const charts = new Map();
    let controller = null, metricAttempt = null, metricCount = 0;

    function renderStatus(s) {
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
      $("#job-facts").replaceChildren(...facts.map(([k, v]) =>
        el("div", {}, [el("dt", {textContent: k}), el("dd", {textContent: String(v)})])));
      $("#params").replaceChildren(tableNode({title: "", columns: ["param", "value"], rows: flatRows(job.params)}, "kv"));
      if (job.error) {
        $("#job-error").replaceChildren(el("div", {className: "error", textContent: `${job.error.type}: ${job.error.message}`}));
      }
    }

    function clearCharts() {
      charts.clear();
      metricCount = 0;
      $("#charts").replaceChildren(el("p", {className: "muted", id: "no-metrics", textContent: "No metrics yet."}));
      $("#metric-count").textContent = "";
    }

    function addMetric(m) {
      const slash = m.name.indexOf("/");
      const prefix = slash < 0 ? m.name : m.name.slice(0, slash);
      let chart = charts.get(prefix);
      if (!chart) {
        $("#no-metrics")?.remove();
        chart = new GChart.LineChart($("#charts"), {title: prefix, xLabel: "step", yLabel: prefix});
        charts.set(prefix, chart);
      }
      chart.add(slash < 0 ? m.name : m.name.slice(slash + 1), m.step, m.value);
      metricCount += 1;
      $("#metric-count").textContent = `(${metricCount} points)`;
    }

    async function renderArtifacts() {
      const arts = await (await api(`/v1/jobs/${id}/artifacts`)).json();
      const links = [], images = [];
      for (const a of arts) {
        if (a.media_type === "image/png") {
          const blob = await (await api(a.url, {headers: {Accept: "image/png"}})).blob();
          images.push(el("figure", {}, [el("img", {src: URL.createObjectURL(blob), alt: a.name}),
                                        el("figcaption", {textContent: `${a.name} · ${formatValue(a.size)} bytes`})]));
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
      let cursor = null;
      do {
        const q = new URLSearchParams({limit: "10000"});
        if (cursor !== null) q.set("cursor", String(cursor));
        const page = await (await api(`/v1/jobs/${id}/metrics?${q}`, {signal: signal})).json();
        page.items.forEach(addMetric);
        cursor = page.next_cursor;
      } while (cursor !== null && !signal.aborted);
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
        $("#result").replaceChildren(...(job.result
          ? resultTables(job.result).map(t => tableNode(t, "grid result-table"))
          : [el("p", {className: "muted", textContent: `No result: the job ${job.status}.`})]));
        await renderArtifacts();
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

  if (document.body.dataset.page === "index") initIndex();
  else if (document.body.dataset.page === "job") initJob();
})();
