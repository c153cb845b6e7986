/* The arithmetic of the pages' charts (chartset.js draws them with uPlot): which chart each metric goes to, the
   scales' ranges, the axes' tick labels and widths. Functions of their arguments only (a canvas measures text),
   loaded on every page before the scripts that use them; the page tests call them too, as window.gradlabCharts. */
window.gradlabCharts = (function () {
  "use strict";

  /* Which chart each metric name goes to, and its line's label. Names are "prefix/quantity" paths: a trailing part
     that ends names under two or more prefixes which also share another trailing part is a quantity measured per
     arm ("chi_exact/train_loss", "per_micro_batch/train_loss" → chart "train_loss", lines "chi_exact" …); the
     shortest such tail wins. Otherwise the first part names the chart and the rest the line ("fit_kl/n=4",
     "ratio/q10"); a name without "/" is a chart of its own. Given each name's steps, a quantity chart whose points
     all sit at one step, where the prefix's names span several, is turned around: there the step indexes the arms
     ("forward_ratio/arithmetic" at 0, "forward_ratio/geometric" at 1 → chart "forward_ratio", a point per arm). */
  function groupNames(names, steps) {
    const byTail = new Map(), byHead = new Map();
    const splits = n => { const p = n.split("/"); return p.slice(1).map((_, i) => [p.slice(0, i + 1).join("/"), p.slice(i + 1).join("/")]); };
    for (const n of names) {
      for (const [head, tail] of splits(n)) {
        if (!byTail.has(tail)) byTail.set(tail, new Set());
        if (!byHead.has(head)) byHead.set(head, new Set());
        byTail.get(tail).add(head);
        byHead.get(head).add(tail);
      }
    }
    const isQuantity = tail => {
      const heads = [...byTail.get(tail)];
      if (heads.length < 2) return false;
      const seen = new Map();
      for (const h of heads) for (const t of byHead.get(h)) if (t !== tail) seen.set(t, (seen.get(t) || 0) + 1);
      return [...seen.values()].some(count => count >= 2);
    };
    const out = new Map(), byQuantity = new Map();
    for (const n of names) {
      const found = splits(n).reverse().find(([, tail]) => isQuantity(tail));
      const parts = n.split("/");
      out.set(n, found ? {chart: found[1], label: found[0]}
                       : {chart: parts[0], label: parts.length > 1 ? parts.slice(1).join("/") : n});
      if (found) byQuantity.set(n, found);
    }
    if (!steps) return out;
    const stepCount = members => new Set(members.flatMap(m => steps(m))).size;
    const quantity = [...byQuantity.keys()];
    for (const n of quantity) {
      const [head, tail] = byQuantity.get(n);
      const sameChart = quantity.filter(m => byQuantity.get(m)[1] === tail);
      const sameHead = quantity.filter(m => byQuantity.get(m)[0] === head);
      if (stepCount(sameChart) === 1 && stepCount(sameHead) > 1) out.set(n, {chart: head, label: tail});
    }
    return out;
  }

  /* Log scale when the data spans three decades or more (x: two), all values positive. */
  function spansDecades(values, decades) {
    const [lo, hi] = extent(values);
    return lo > 0 && hi / lo >= 10 ** decades;
  }

  function extent(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) if (v !== null && Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    return [lo, hi];
  }

  /* The y range around a chart's data, with uPlot's usual headroom; a single value (one point, or a constant line)
     gets a tenth of itself on both sides, so that it draws mid-chart with ticks that tell its value. */
  function padded(lo, hi) {
    if (lo === null || hi === null || !Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
    if (hi > lo) return uPlot.rangeNum(lo, hi, 0.1, true);
    const room = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    return [lo - room, lo + room];
  }

  const SI = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  const trimZeros = text => text.includes(".") ? text.replace(/\.?0+(?=$|e)/, "") : text;

  /* Tick labels short enough for the axis: from ten thousand up with an SI suffix (250k, 1.5M), below 1e-3
     scientific (2.5e-7), fixed in between, with the decimals the ticks' spacing needs (0.25 → two); on a log axis,
     or with a single tick, each label alone to three significant digits. */
  function tickLabels(ticks, log) {
    const finite = ticks.filter(v => v !== null && Number.isFinite(v));
    let step = Infinity;
    for (let i = 1; i < finite.length; i++) step = Math.min(step, Math.abs(finite[i] - finite[i - 1]) || Infinity);
    const alone = log || !Number.isFinite(step);
    const top = Math.max(0, ...finite.map(Math.abs));
    const decimals = unit => {  // the fewest decimals that write step/unit exactly
      const q = step / unit;
      let d = 0;
      while (d < 6 && Math.abs(q * 10 ** d - Math.round(q * 10 ** d)) > 1e-6 * Math.max(1, q * 10 ** d)) d++;
      return d;
    };
    return ticks.map(v => {
      if (v === null || !Number.isFinite(v)) return "";
      if (v === 0) return "0";
      const mag = alone ? Math.abs(v) : top;
      const si = SI.find(([unit]) => mag >= (unit === 1e3 ? 1e4 : unit));
      if (si) return trimZeros((v / si[0]).toFixed(alone ? 2 : decimals(si[0]))) + si[1];
      if (mag < 1e-3) {
        const exponent = Math.floor(Math.log10(Math.abs(v)));
        return trimZeros(v.toExponential(alone ? 2 : decimals(10 ** exponent)));
      }
      return alone ? String(Number(v.toPrecision(3))) : v.toFixed(decimals(1));
    });
  }

  /* A log axis over many decades keeps every n-th one (ticks, grid lines and labels), a label per 18 px of height
     (y) or 60 px of width (x): uPlot would draw them all, overprinting each other (uPlot's axis "filter"). */
  function thinDecades(self, splits, axisIdx) {
    const css = (axisIdx === 0 ? self.bbox.width : self.bbox.height) / (window.devicePixelRatio || 1);
    const labels = Math.max(1, css / (axisIdx === 0 ? 60 : 18));
    const decade = v => { const e = Math.log10(v); return Math.abs(e - Math.round(e)) < 1e-9 ? Math.round(e) : null; };
    const every = Math.max(1, Math.ceil(splits.filter(v => decade(v) !== null).length / labels));
    return splits.map(v => decade(v) !== null && decade(v) % every === 0 ? v : null);
  }

  /* The width an axis needs for its labels (uPlot's axis "size"), measured in the axis font. */
  const AXIS_FONT = "12px system-ui, -apple-system, \"Segoe UI\", Roboto, sans-serif";
  let measurer = null;
  function axisSize(self, values) {
    if (!values) return 40;
    measurer = measurer || document.createElement("canvas").getContext("2d");
    measurer.font = AXIS_FONT;
    const widest = Math.max(0, ...values.map(v => measurer.measureText(String(v)).width));
    return Math.ceil(widest) + 20;  // tick length, gap, and a little air
  }

  /* uPlot spans x from the chart's first step to its last, and a chart whose points all sit at one step over a
     range of its own choosing (0–100 for step 0). A chart of a few steps gets half a step of room at either end
     instead, so that its end points (dots) are drawn whole and a lone step is centred. */
  function fitX(plot, xs, log) {
    if (log || !xs.length || xs.length > 5) return;
    let gap = 1;
    for (let i = 1; i < xs.length; i++) gap = i === 1 ? xs[1] - xs[0] : Math.min(gap, xs[i] - xs[i - 1]);
    plot.setScale("x", {min: xs[0] - gap / 2, max: xs[xs.length - 1] + gap / 2});
  }

  // steps are whole numbers: the step axis ticks only those
  const STEP_INCRS = [1, 2, 5].flatMap(m => [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8].map(p => m * p)).sort((a, b) => a - b);

  return {groupNames, spansDecades, extent, padded, tickLabels, thinDecades, axisSize, fitX, STEP_INCRS};
})();
