/* The catalogue pages: a dataset's state and preview (/datasets/{id}), an uploaded model (/models/{id}) and the
   lists of studies, datasets and models (/studies, /datasets, /models: listing.html). */
(function () {
  "use strict";

  const {REFRESH_MS, $, api, showError, initKeyForm, formatValue, el, tableNode, progressBar, badge, when,
         link} = window.gradlab;
  const {extent} = window.gradlabCharts;

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

  const page = document.body.dataset.page;
  if (page === "dataset") initDataset();
  else if (page === "model") initModel();
  else if (LISTINGS[page]) initListing(LISTINGS[page]);
})();
