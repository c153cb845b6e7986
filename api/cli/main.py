"""The ``gradlab`` command: run the embedded all-in-one, or the API, a worker, or the migrations on their own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import typer

from api.cli.jobs import register as register_client_commands
from api.cli.models import models_cli
from core import logs
from core.settings import get_settings

cli = typer.Typer(help="gradlab: training-analysis jobs over HTTP.", no_args_is_help=True, add_completion=False)


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic upgrade head)."""
    from core.db.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    typer.echo(f"database at head: {_redact(settings.resolved_database_url)}")


def _check_bind(host: str) -> None:
    """Exit 2 with a message (no traceback) for a host that does not resolve, or, with authentication disabled,
    one that is not loopback (the app refuses other peers anyway: this says so before anything starts)."""
    import socket

    from api.guards import is_loopback

    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError) as exc:
        typer.echo(f"--host {host}: not an address or a resolvable name ({exc})", err=True)
        raise typer.Exit(2) from None
    if get_settings().auth == "disabled" and not all(is_loopback(a) for a in addresses):
        typer.echo(
            f"refusing to serve without authentication on {host}: set GRADLAB_AUTH=required or bind to 127.0.0.1",
            err=True,
        )
        raise typer.Exit(2)


@cli.command()
def api(host: str = "127.0.0.1", port: int = 8000, workers: int = typer.Option(1, min=1, max=64)) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    settings = get_settings()
    _check_bind(host)
    if settings.auth == "disabled":
        typer.echo("authentication is DISABLED (GRADLAB_AUTH=disabled): loopback only, every caller is admin")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs.configure(settings.log_format)
    # Each uvicorn worker process keeps its metric values in files here, summed at scrape time (a fresh folder
    # per start: values of an earlier run's processes must not count).
    prom_dir = None
    if settings.metrics and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        prom_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gradlab-metrics-")
    try:
        # Open event streams would otherwise hold a shutdown forever; the protocol bounds the wait for headers.
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=5,
            http="api.serving:HeaderDeadlineProtocol",
            timeout_keep_alive=5,
        )
    finally:
        if prom_dir is not None:
            shutil.rmtree(prom_dir, ignore_errors=True)
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]


@cli.command()
def worker(
    queues: str = typer.Option(None, help="comma-separated queues; default GRADLAB_QUEUES"), loglevel: str = "INFO"
) -> None:
    """Run one Celery worker process (solo pool: the job runs in this process, which owns its CUDA context)."""
    from workers.tasks import worker_app

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        "worker",
        "-Q",
        queues or settings.queues,
        "--pool=solo",
        "--concurrency=1",
        f"--loglevel={loglevel}",
        "-n",
        f"gradlab-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    if settings.resolved_broker_url.startswith("filesystem://"):
        argv.append("--without-heartbeat")
    worker_app(settings).worker_main(argv)


@cli.command()
def up(host: str = "127.0.0.1", port: int = 8000, data_dir: Path = typer.Option(Path("data"))) -> None:
    """Embedded all-in-one: SQLite + filesystem broker in DATA_DIR, migrate, two worker processes and the API.

    The first worker consumes every queue; the second only the lanes (quick jobs and dataset validations), so that
    these start at once while a long training job holds the first."""
    os.environ["GRADLAB_DATA_DIR"] = str(data_dir.resolve())
    os.environ.setdefault("GRADLAB_AUTH", "disabled")
    os.environ.setdefault("GRADLAB_LOG_FORMAT", "console")  # a person reads these
    get_settings.cache_clear()
    _check_bind(host)
    migrate()
    worker = [sys.executable, "-m", "api.cli.main", "worker"]
    procs = [
        subprocess.Popen(worker, env=os.environ.copy()),
        subprocess.Popen([*worker, "--queues", get_settings().lane_queues], env=os.environ.copy()),
    ]
    typer.echo(f"gradlab is up: http://{host}:{port}  (API docs: http://{host}:{port}/docs; data in {data_dir})")
    typer.echo("Ctrl-C stops the API and the workers.")
    try:
        api(host=host, port=port, workers=1)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


keys_cli = typer.Typer(help="Create, list and revoke API keys (stored hashed).", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(models_cli, name="models")


def _sessions():
    from core.db.engine import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(get_settings().resolved_database_url))


@keys_cli.command("create")
def keys_create(
    tenant: str = typer.Option(..., help="the tenant the key acts for"),
    name: str = typer.Option("", help="a label for people"),
    admin: bool = typer.Option(False, help="may see every tenant's jobs"),
) -> None:
    """Print a new key once; only its hash is stored."""
    from core.keys.repository import create_key

    with _sessions()() as session:
        try:
            row, plain = create_key(session, tenant, name, admin)
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
    typer.echo(f"id: {row.id}\ntenant: {row.tenant}\nadmin: {row.admin}\nkey: {plain}")


@keys_cli.command("list")
def keys_list() -> None:
    from core.keys.repository import list_keys

    with _sessions()() as session:
        for k in list_keys(session):
            state = f"revoked {k.revoked_at.isoformat()}" if k.revoked_at else "active"
            typer.echo(f"{k.id}  tenant={k.tenant}  admin={k.admin}  {state}  {k.name}")


@keys_cli.command("revoke")
def keys_revoke(key_id: str) -> None:
    import uuid

    from core.keys.repository import revoke_key

    with _sessions()() as session:
        if not revoke_key(session, uuid.UUID(key_id)):
            typer.echo(f"no active key {key_id}", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


_AGE_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def _parse_age(text: str) -> float:
    """'90d', '12h', '30m' or '45s' in seconds; typer.BadParameter (exit 2) otherwise."""
    unit, number = text[-1:], text[:-1]
    try:
        seconds = float(number) * _AGE_UNITS[unit]
    except (KeyError, ValueError):
        raise typer.BadParameter(f"{text!r}: a number and a unit, d, h, m or s (e.g. 90d)") from None
    if not seconds > 0:
        raise typer.BadParameter(f"{text!r}: must be more than zero")
    return seconds


@cli.command()
def prune(
    older_than: str = typer.Option(
        None, help="age of the finished jobs to prune, e.g. 90d; default GRADLAB_RETENTION_DAYS"
    ),
    keep_summary: bool = typer.Option(False, help="keep each metric series' rollup, so charts still draw"),
    batch_rows: int = typer.Option(5000, min=1, help="metric rows deleted per transaction"),
) -> None:
    """Remove the metric rows and artifacts (rows and blob files) of jobs that finished before OLDER_THAN ago; each
    job keeps its row, params, result (summary included) and error."""
    from datetime import timedelta

    from core.blobs.store import blob_store
    from core.db.tables import utcnow
    from core.jobs.retention import prune as prune_jobs

    settings = get_settings()
    if older_than is not None:
        age_s = _parse_age(older_than)
    elif settings.retention_days > 0:
        age_s = settings.retention_days * 86400
    else:
        typer.echo("give --older-than (e.g. 90d) or set GRADLAB_RETENTION_DAYS", err=True)
        raise typer.Exit(2)
    cutoff = utcnow() - timedelta(seconds=age_s)
    report = prune_jobs(
        _sessions(), blob_store(settings), finished_before=cutoff, keep_summary=keep_summary, batch_rows=batch_rows
    )
    typer.echo(
        f"pruned {report.jobs} jobs finished before {cutoff.isoformat(timespec='seconds')}: "
        f"{report.metric_rows} metric rows, {report.rollup_rows} rollup rows, {report.artifacts} artifacts"
    )


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


register_client_commands(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
