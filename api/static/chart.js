/* gchart: a small line-chart library on <canvas> for live metric curves (no dependencies).

   const chart = new GChart.LineChart(parentElement, {title: "loss", xLabel: "step", yLabel: "loss"});
   chart.add("train", 10, 0.53);   // series name, x, y (null or non-finite y leaves a gap)
   chart.clear();

   Axes get "nice" ticks (1, 2, 5 × 10^k); the y axis turns logarithmic on its own when every value is positive and
   they span more than three decades (typical of losses); several series get a legend. Redraws are coalesced, so
   adding thousands of points one by one costs one draw per frame. */
(function (global) {
  "use strict";

  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];
  const MAX_LEGEND = 12;
  const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

  function niceStep(span, target) {
    const raw = span / Math.max(1, target);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  }

  function linearTicks(lo, hi, target) {
    if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
    const step = niceStep(hi - lo, target);
    const start = Math.floor(lo / step) * step;
    const end = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = start; v <= end + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return {lo: start, hi: end, ticks: ticks};
  }

  function logTicks(lo, hi) {
    const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
    const every = Math.max(1, Math.ceil((b - a) / 6));
    const ticks = [];
    for (let e = a; e <= b; e += every) ticks.push(Math.pow(10, e));
    return {lo: Math.pow(10, a), hi: Math.pow(10, b), ticks: ticks};
  }

  function formatTick(v) {
    if (v === 0) return "0";
    const mag = Math.abs(v);
    if (mag >= 1e5 || mag < 1e-3) return v.toExponential(0).replace("e+", "e");
    return String(Number(v.toPrecision(4)));
  }

  class LineChart {
    constructor(parent, options) {
      this.options = Object.assign({title: "", xLabel: "x", yLabel: "y", height: 280}, options || {});
      this.series = new Map();
      this.figure = document.createElement("figure");
      this.figure.className = "chart";
      this.canvas = document.createElement("canvas");
      this.canvas.className = "chart-canvas";
      this.canvas.setAttribute("role", "img");
      this.canvas.setAttribute("aria-label", this.options.title);
      this.figure.appendChild(this.canvas);
      parent.appendChild(this.figure);
      this.pending = false;
      if (global.ResizeObserver) new ResizeObserver(() => this.schedule()).observe(this.figure);
      this.schedule();
    }

    add(name, x, y) {
      let s = this.series.get(name);
      if (!s) {
        s = {name: name, color: PALETTE[this.series.size % PALETTE.length], points: [], sorted: true};
        this.series.set(name, s);
      }
      const last = s.points[s.points.length - 1];
      if (last && x < last[0]) s.sorted = false;
      s.points.push([x, (y === null || !isFinite(y)) ? null : y]);
      this.schedule();
    }

    clear() {
      this.series.clear();
      this.schedule();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      setTimeout(() => { this.pending = false; this.draw(); }, 60);
    }

    bounds() {
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
      for (const s of this.series.values()) {
        if (!s.sorted) { s.points.sort((a, b) => a[0] - b[0]); s.sorted = true; }
        for (const [x, y] of s.points) {
          if (x < x0) x0 = x; if (x > x1) x1 = x;
          if (y !== null) { if (y < y0) y0 = y; if (y > y1) y1 = y; }
        }
      }
      return {x0, x1, y0, y1};
    }

    draw() {
      const o = this.options, dpr = global.devicePixelRatio || 1;
      const width = Math.max(200, this.canvas.clientWidth || this.figure.clientWidth || 420), height = o.height;
      this.canvas.width = Math.round(width * dpr);
      this.canvas.height = Math.round(height * dpr);
      this.canvas.style.height = height + "px";
      const g = this.canvas.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, width, height);
      g.fillStyle = "#fff";
      g.fillRect(0, 0, width, height);
      g.font = FONT;
      g.fillStyle = "#1d2330";
      g.textBaseline = "top";
      g.font = "600 13px system-ui, sans-serif";
      g.fillText(o.title, 8, 6);
      g.font = FONT;

      const m = {left: 64, right: 14, top: 30, bottom: 42};
      const pw = width - m.left - m.right, ph = height - m.top - m.bottom;
      const b = this.bounds();
      if (!isFinite(b.x0) || !isFinite(b.y0)) {
        g.fillStyle = "#6b7380";
        g.fillText("waiting for data…", m.left + 10, m.top + 10);
        return;
      }
      const logY = b.y0 > 0 && b.y1 / b.y0 > 1000;
      const xs = linearTicks(b.x0, b.x1, Math.max(2, Math.floor(pw / 90)));
      if (b.x1 > b.x0) { xs.lo = b.x0; xs.hi = b.x1; xs.ticks = xs.ticks.filter(t => t >= b.x0 && t <= b.x1); }
      const ys = logY ? logTicks(b.y0, b.y1) : linearTicks(b.y0, b.y1, Math.max(2, Math.floor(ph / 45)));
      const fy = logY ? (v => Math.log10(v)) : (v => v);
      const X = v => m.left + (v - xs.lo) / (xs.hi - xs.lo || 1) * pw;
      const Y = v => m.top + ph - (fy(v) - fy(ys.lo)) / (fy(ys.hi) - fy(ys.lo) || 1) * ph;

      // grid and tick labels
      g.strokeStyle = "#e6e9ee";
      g.lineWidth = 1;
      g.fillStyle = "#4b5362";
      g.textAlign = "right";
      g.textBaseline = "middle";
      for (const t of ys.ticks) {
        const py = Math.round(Y(t)) + 0.5;
        g.beginPath(); g.moveTo(m.left, py); g.lineTo(m.left + pw, py); g.stroke();
        g.fillText(formatTick(t), m.left - 6, py);
      }
      g.textAlign = "center";
      g.textBaseline = "top";
      for (const t of xs.ticks) {
        const px = Math.round(X(t)) + 0.5;
        g.beginPath(); g.moveTo(px, m.top); g.lineTo(px, m.top + ph); g.stroke();
        g.fillText(formatTick(t), px, m.top + ph + 5);
      }
      // axes and their labels
      g.strokeStyle = "#4b5362";
      g.beginPath(); g.moveTo(m.left + 0.5, m.top); g.lineTo(m.left + 0.5, m.top + ph + 0.5);
      g.lineTo(m.left + pw, m.top + ph + 0.5); g.stroke();
      g.fillStyle = "#1d2330";
      g.fillText(o.xLabel, m.left + pw / 2, height - 16);
      g.save();
      g.translate(13, m.top + ph / 2);
      g.rotate(-Math.PI / 2);
      g.textBaseline = "middle";
      g.fillText(o.yLabel + (logY ? " (log scale)" : ""), 0, 0);
      g.restore();

      // the curves, clipped to the plot area; sparse series also get markers
      g.save();
      g.beginPath(); g.rect(m.left, m.top - 2, pw + 2, ph + 4); g.clip();
      g.lineWidth = 1.8;
      g.lineJoin = "round";
      for (const s of this.series.values()) {
        g.strokeStyle = g.fillStyle = s.color;
        g.beginPath();
        let open = false;
        for (const [x, y] of s.points) {
          if (y === null || (logY && y <= 0)) { open = false; continue; }
          if (open) g.lineTo(X(x), Y(y)); else { g.moveTo(X(x), Y(y)); open = true; }
        }
        g.stroke();
        if (s.points.length <= 40) {
          for (const [x, y] of s.points) {
            if (y === null || (logY && y <= 0)) continue;
            g.beginPath(); g.arc(X(x), Y(y), 2.6, 0, 2 * Math.PI); g.fill();
          }
        }
      }
      g.restore();
      if (this.series.size > 1 || (this.series.size === 1 && this.series.keys().next().value !== o.title)) {
        this.legend(g, m.left + pw, m.top);
      }
    }

    legend(g, right, top) {
      const all = Array.from(this.series.values());
      const shown = all.slice(0, MAX_LEGEND);
      const labels = shown.map(s => s.name);
      if (all.length > shown.length) labels.push(`+${all.length - shown.length} more`);
      g.font = FONT;
      const w = Math.max(...labels.map(l => g.measureText(l).width)) + 30, h = labels.length * 16 + 8;
      const x = right - w - 6, y = top + 4;
      g.fillStyle = "rgba(255,255,255,0.88)";
      g.strokeStyle = "#d4d8df";
      g.fillRect(x, y, w, h); g.strokeRect(x + 0.5, y + 0.5, w, h);
      g.textAlign = "left";
      g.textBaseline = "middle";
      labels.forEach((label, i) => {
        const ly = y + 12 + i * 16;
        if (i < shown.length) {
          g.strokeStyle = shown[i].color; g.lineWidth = 2.5;
          g.beginPath(); g.moveTo(x + 6, ly); g.lineTo(x + 20, ly); g.stroke();
        }
        g.fillStyle = "#1d2330";
        g.fillText(label, x + 25, ly);
      });
    }
  }

  global.GChart = {LineChart: LineChart, niceStep: niceStep, formatTick: formatTick};
})(window);
