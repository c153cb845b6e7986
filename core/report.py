"""A job's result as tables, and a one-screen HTML report that needs nothing but a browser (no network, no scripts).

The tables are shared with the CLI, so a result reads the same in a terminal and in the report: scalars and
nested dicts become ``key.sub = value`` rows, lists of records (one dict per arm, dimension, optimizer, ...) become
tables of their own with one column per field.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

MAX_INLINE = 8  # longer scalar lists are summarised


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def format_value(value) -> str:
    """Numbers to about four significant digits, large ones grouped, tiny and huge ones in scientific notation."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        mag = abs(value)
        if mag == 0:
            return "0"
        if 1e-3 <= mag < 1e4:
            return f"{value:.4g}"
        if 1e4 <= mag < 1e12:
            return f"{value:,.0f}"
        return f"{value:.3e}"
    if isinstance(value, list):
        return _format_list(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    return str(value)


def _format_list(values: list) -> str:
    if values and all(isinstance(v, list) for v in values):
        width = len(values[0]) if all(len(v) == len(values[0]) for v in values) else "?"
        return f"[{len(values)}×{width} values]"

    def one(v) -> str:
        return f"{{{format_value(v)}}}" if isinstance(v, dict) else format_value(v)

    if len(values) <= MAX_INLINE:
        return ", ".join(one(v) for v in values)
    head = ", ".join(one(v) for v in values[:3])
    return f"{head}, …, {one(values[-1])} ({len(values)} values)"


def _is_records(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def format_cell(cell) -> str:
    """A summary table cell: a number, text, or a spread over seeds ({mean, sd, n}) as 'mean ± sd (n)'."""
    if isinstance(cell, dict) and "mean" in cell:
        if cell.get("sd") is None:
            return format_value(cell["mean"])
        return f"{format_value(cell['mean'])} ± {format_value(cell['sd'])} (n={cell.get('n', 1)})"
    return format_value(cell)


def summary_tables(summary: dict) -> list[Table]:
    """A summary's comparison table, then its key figures (the headline and verdict are printed above them)."""
    table = summary["table"]
    comparison = Table("Comparison", list(table["columns"]), [[format_cell(c) for c in row] for row in table["rows"]])
    figures = Table("Key figures", ["figure", "value"], [[k, format_value(v)] for k, v in summary["figures"].items()])
    return [comparison, figures]


def verdict_text(summary: dict) -> str:
    """'supports (rel_diff_accumulated = 1.79e-07): rule…' — the verdict with the statistic it rests on."""
    v = summary["verdict"]
    return f"{v['outcome']} ({v['statistic']} = {format_value(v['value'])}): {v['rule']}"


def result_tables(result: dict, title: str = "Result") -> list[Table]:
    """A key/value table of everything scalar (nested keys dotted), then one table per list of records. The
    ``summary`` is left out: it is rendered first, by ``summary_tables``."""
    result = {k: v for k, v in result.items() if k != "summary"}
    summary = Table(title, ["key", "value"])
    records: list[Table] = []

    def walk(value, path: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif _is_records(value):
            columns: list[str] = []
            for rec in value:
                columns += [k for k in rec if k not in columns]
            records.append(Table(path, columns, [[format_value(rec.get(c)) for c in columns] for rec in value]))
        else:
            summary.rows.append([path or "value", format_value(value)])

    walk(result, "")
    return ([summary] if summary.rows else []) + records


def flat_rows(data: dict) -> list[list[str]]:
    """Every leaf of a nested dict as [dotted key, value]; lists (of records too) stay on one line."""
    rows: list[list[str]] = []

    def walk(value, path: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        else:
            rows.append([path, format_value(value)])

    walk(data, "")
    return rows


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    return (
        f"<table><caption>{html.escape(table.title)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


STYLE = """
*{box-sizing:border-box}body{margin:0;font:13px/1.35 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
color:#1d2330;background:#f6f7f9}header{padding:10px 18px;background:#1d2330;color:#fff;display:flex;gap:18px;
align-items:baseline}header h1{font-size:17px;margin:0}header span{opacity:.75}
main{display:grid;grid-template-columns:minmax(300px,32%) 1fr;gap:14px;padding:14px 18px;height:calc(100vh - 42px)}
.col{overflow:auto}table{border-collapse:collapse;width:100%;margin:0 0 12px;background:#fff}
caption{text-align:left;font-weight:600;padding:4px 0}th,td{border:1px solid #dde1e7;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#eef1f5}td:not(:first-child){font-variant-numeric:tabular-nums}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:10px;align-content:start}
figure{margin:0;background:#fff;border:1px solid #dde1e7;padding:6px}figure img{width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;padding-top:4px}h3{font-size:13px;margin:4px 0}
ul{margin:4px 0 12px;padding-left:18px}
.headline{font-size:15px;font-weight:600;margin:4px 0 6px}.verdict{margin:0 0 10px;padding:4px 8px;border-radius:4px;
background:#eef1f5}.verdict.supports{background:#e3f4e8}.verdict.contradicts{background:#fbe5e5}
@media print{main{height:auto;display:block}}
"""


def html_report(kind: str, params: dict, result: dict, artifacts: list[tuple[str, bytes, str]]) -> bytes:
    """A self-contained HTML page: result tables and params on the left, every PNG artifact inline on the right.

    It carries a Content-Security-Policy that forbids scripts and network access, so opening a downloaded report
    (whose text comes partly from user params) runs nothing and fetches nothing.
    """
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    tables = "".join(_table_html(t) for t in result_tables(result or {}))
    summary = (result or {}).get("summary")
    if summary:
        tables = (
            f'<p class="headline">{html.escape(summary["headline"])}</p>'
            f'<p class="verdict {html.escape(summary["verdict"]["outcome"])}">{html.escape(verdict_text(summary))}'
            f"</p>" + "".join(_table_html(t) for t in summary_tables(summary)) + tables
        )
    params_table = _table_html(Table("Params", ["param", "value"], flat_rows(params or {})))
    figures, others = [], []
    for name, data, media_type in artifacts:
        if media_type == "image/png":
            src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            figures.append(
                f'<figure><img src="{src}" alt="{html.escape(name)}">'
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
        else:
            others.append(f"<li>{html.escape(name)} ({html.escape(media_type)}, {format_value(len(data))} bytes)</li>")
    other_list = f"<h3>Other artifacts</h3><ul>{''.join(others)}</ul>" if others else ""
    plots = "".join(figures) or "<p>No plots were stored for this job.</p>"
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradlab report: {html.escape(kind)}</title><style>{STYLE}</style></head>
<body><header><h1>gradlab · {html.escape(kind)}</h1><span>report generated {made}</span></header>
<main><section class="col">{tables or "<p>No result.</p>"}{params_table}{other_list}</section>
<section class="col plots">{plots}</section></main>
</body></html>
"""
    return doc.encode("utf-8")
