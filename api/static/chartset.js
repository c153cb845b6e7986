/* The pages' charts, drawn with uPlot: one per metric, the arms (or settings, or jobs) overlaid, seeds as bands.
   The arithmetic (grouping, scales, ticks) is charts.js's; this file holds the drawing, as window.gradlabChartSet. */
window.gradlabChartSet = (function () {
  "use strict";

  const {formatValue, el} = window.gradlab;
  const {groupNames, spansDecades, padded, tickLabels, thinDecades, axisSize, fitX, STEP_INCRS} = window.gradlabCharts;

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

  return {ChartSet};
})();
