/* The job pages: the job list (/), a job's live page (/jobs/{id}: its Server-Sent Events while it runs, its
   metrics read page by page once finished) and finished jobs side by side (/compare?ids=…). */
(function () {
  "use strict";

  const {TERMINAL, REFRESH_MS, $, api, showError, initKeyForm, streamEvents, formatValue, resultTables, flatRows, el,
         tableNode, progressBar, badge, when, answerNodes, link, modelNodes, datasetNodes, ranOn} = window.gradlab;
  const {groupNames} = window.gradlabCharts;
  const {ChartSet} = window.gradlabChartSet;

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

  const page = document.body.dataset.page;
  if (page === "index") initIndex();
  else if (page === "compare") initCompare();
  else if (page === "job") initJob();
})();
