"""The dataset and study lists as they grow: a first page and a page 90 % deep, per filter, as the tenant and as an
admin, timed through the repository functions the routes call, with EXPLAIN (ANALYZE, BUFFERS) of each statement.

One fresh PostgreSQL database (migrated). Full size: 200,000 datasets over 100 tenants (``bench`` holds 20,000:
90 / 5 / 3 / 2 % ready / rejected / validating / uploading, five formats), 20,000 studies (``bench`` holds 10,000 of
10 children each, 94 / 4 / 1 % succeeded / failed / cancelled and 50 queued or running; the others 5 children each),
so 150,000 child jobs. Vacuumed and analysed before measuring, as autovacuum would have them.

    python -m bench.lists [--fraction 1.0] [--repeat 30]

Results: bench/results/lists.json and the plans in bench/results/lists_explain.txt.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import event, insert, text

from bench.common import RESULTS, percentiles, print_table, write_results
from core.datasets import repository as datasets
from core.db import paging
from core.db.engine import make_engine, make_sessionmaker
from core.db.migrate import upgrade
from core.db.tables import Dataset, Job, Study, StudyJob
from core.studies import repository as studies
from tests.stack import create_database, drop_database

START = datetime(2026, 1, 1, tzinfo=UTC)
FORMATS = ["csv", "npz", "npy", "parquet", "jsonl"]


def _pick(rng: random.Random, shares: list[tuple[str, float]]) -> str:
    return rng.choices([s for s, _ in shares], [w for _, w in shares])[0]


def populate(sessions, fraction: float) -> None:
    rng = random.Random(0)
    n_datasets, n_bench_datasets = int(200_000 * fraction), int(20_000 * fraction)
    ds_shares = [("ready", 0.90), ("rejected", 0.05), ("validating", 0.03), ("uploading", 0.02)]
    rows = []
    for i in range(n_datasets):
        tenant = "bench" if i < n_bench_datasets else f"t{i % 99}"
        ds_id = uuid.uuid4()
        rows.append(
            dict(
                id=ds_id,
                tenant=tenant,
                filename=f"d{i}.csv",
                status=_pick(rng, ds_shares),
                format=rng.choice(FORMATS),
                upload_size=1000,
                location=f"datasets/{ds_id}",
                created_at=START + timedelta(seconds=rng.randrange(365 * 86400)),
            )
        )
    with sessions() as s:
        s.execute(insert(Dataset.__table__), rows)
        s.commit()

    n_bench, n_other = int(10_000 * fraction), int(10_000 * fraction)
    study_rows, job_rows, link_rows = [], [], []
    active_left = 50
    for i in range(n_bench + n_other):
        bench = i < n_bench
        tenant, children = ("bench", 10) if bench else (f"t{i % 99}", 5)
        created = START + timedelta(seconds=rng.randrange(365 * 86400))
        outcome = _pick(rng, [("succeeded", 0.94), ("failed", 0.04), ("cancelled", 0.01), ("active", 0.01)])
        if outcome == "active" and not (bench and active_left > 0):
            outcome = "succeeded"
        if outcome == "active":
            active_left -= 1
        study_id = uuid.uuid4()
        study_rows.append(
            dict(
                id=study_id,
                tenant=tenant,
                kind="init_averaging",
                request={},
                settings=[{"label": f"s{k}", "params": {}} for k in range(children)],
                seeds=[0],
                baseline=0,
                created_at=created,
                cancelled_at=created if outcome == "cancelled" else None,
            )
        )
        for k in range(children):
            status = {
                "succeeded": "succeeded",
                "failed": "failed" if k == 0 else "succeeded",
                "cancelled": "cancelled" if k % 2 else "succeeded",
                "active": "queued" if k % 3 else "running",
            }[outcome]
            job_id = uuid.uuid4()
            job_rows.append(
                dict(
                    id=job_id,
                    tenant=tenant,
                    kind="init_averaging",
                    status=status,
                    params={},
                    seed=0,
                    device_requested="cpu",
                    queue="cpu",
                    timeout_s=60,
                    progress=1.0 if status != "queued" else 0.0,
                    message="",
                    attempt=1,
                    created_at=created,
                )
            )
            link_rows.append(dict(study_id=study_id, job_id=job_id, setting=k, seed=0))
    with sessions() as s:
        for table, batch in ((Study, study_rows), (Job, job_rows), (StudyJob, link_rows)):
            for start in range(0, len(batch), 20_000):
                s.execute(insert(table.__table__), batch[start : start + 20_000])
        s.commit()


def deep_cursor(sessions, table: str, where: str, params: dict, depth: float) -> str | None:
    with sessions() as s:
        n = s.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar_one()
        row = s.execute(
            text(
                f"SELECT created_at, id FROM {table} WHERE {where} ORDER BY created_at DESC, id DESC "
                f"OFFSET :skip LIMIT 1"
            ),
            {**params, "skip": int(n * depth)},
        ).first()
    return paging.encode_cursor(row.created_at.replace(tzinfo=UTC), row.id) if row else None


def timed(sessions, call, repeat: int) -> dict:
    times = []
    for _ in range(repeat):
        with sessions() as s:
            t0 = time.perf_counter()
            call(s)
            times.append(time.perf_counter() - t0)
    return percentiles(times)


def explained(sessions, call) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of every SELECT ``call`` sends."""
    statements: list[tuple[str, dict]] = []
    with sessions() as s:
        engine = s.get_bind()

        def grab(conn, cursor, statement, parameters, context, executemany):
            if statement.lstrip().upper().startswith("SELECT"):
                statements.append((statement, dict(parameters or {})))

        event.listen(engine, "before_cursor_execute", grab)
        try:
            call(s)
        finally:
            event.remove(engine, "before_cursor_execute", grab)
    plans = []
    with sessions() as s:
        cur = s.connection().connection.driver_connection.cursor()
        for statement, parameters in statements:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plans.append("\n".join(r[0] for r in cur.fetchall()))
    return "\n\n".join(plans)


def paths(sessions) -> dict:
    """name -> the list call it times (first page, and 90 % deep where a cursor applies)."""
    out = {}
    ds_filters = {"all": {}, "status=ready": {"status": "ready"}, "format=csv": {"fmt": "csv"}}
    ds_filters["status=rejected format=npz"] = {"status": "rejected", "fmt": "npz"}
    for who, tenant in (("tenant", "bench"), ("admin", None)):
        for name, f in ds_filters.items():
            where = " AND ".join(
                ([] if tenant is None else ["tenant = :tenant"])
                + (["status = :status"] if "status" in f else [])
                + (["format = :fmt"] if "fmt" in f else [])
            )
            params = {"tenant": tenant, "status": f.get("status"), "fmt": f.get("fmt")}
            deep = deep_cursor(sessions, "datasets", where or "true", params, 0.9)
            for page, cursor in (("first page", None), ("90 % deep", deep)):
                out[f"datasets {who} {name} {page}"] = lambda s, f=f, t=tenant, c=cursor: datasets.list_datasets(
                    s, tenant=t, status=f.get("status"), fmt=f.get("fmt"), limit=50, cursor=c
                )
    deep = deep_cursor(sessions, "studies", "tenant = :tenant", {"tenant": "bench"}, 0.9)
    for status in (None, "queued", "running", "succeeded", "failed", "cancelled"):
        for page, cursor in (("first page", None), ("90 % deep", deep)):
            out[f"studies tenant status={status or 'any'} {page}"] = lambda s, st=status, c=cursor: (
                studies.list_studies(s, tenant="bench", status=st, kind=None, limit=50, cursor=c)
            )
    out["studies admin status=running first page"] = lambda s: studies.list_studies(
        s, tenant=None, status="running", kind=None, limit=50, cursor=None
    )
    out["studies: children counts of a page of 50"] = lambda s: studies.children_by_status(
        s, [st.id for st in studies.list_studies(s, tenant="bench", status=None, kind=None, limit=50, cursor=None)[0]]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    name, url = create_database()
    engine = make_engine(url)
    try:
        upgrade(url)
        sessions = make_sessionmaker(engine)
        t0 = time.perf_counter()
        populate(sessions, args.fraction)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        print(f"populated in {time.perf_counter() - t0:.0f} s")
        results, plans = {}, []
        for label, call in paths(sessions).items():
            results[label] = timed(sessions, call, args.repeat)
            plans.append(f"=== {label}\n{explained(sessions, call)}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "lists_explain.txt").write_text("\n\n".join(plans) + "\n")
        write_results("lists", {"fraction": args.fraction, "results": results})
        print_table(
            [{"path": k, **v} for k, v in results.items()],
            [("path", "path", "s"), ("p50_ms", "p50 ms", ".2f"), ("p90_ms", "p90 ms", ".2f")],
        )
    finally:
        engine.dispose()
        drop_database(name)


if __name__ == "__main__":
    main()
