/* A study's page (/studies/{id}): which setting wins on the figure its jobs' verdicts rest on, by how much and
   with what confidence, the comparison in full, a metric's curves per setting, and its jobs. */
(function () {
  "use strict";

  const {TERMINAL, REFRESH_MS, $, api, showError, initKeyForm, formatValue, el, tableNode, badge} = window.gradlab;
  const {ChartSet} = window.gradlabChartSet;

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

  if (document.body.dataset.page === "study") initStudy();
})();
