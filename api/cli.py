"""The ``gradlab`` command: run the embedded all-in-one, or the API, a worker, or the migrations on their own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import typer

from core.settings import get_settings

cli = typer.Typer(help="gradlab: training-analysis jobs over HTTP.", no_args_is_help=True, add_completion=False)


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic upgrade head)."""
    from core.jobs.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    typer.echo(f"database at head: {_redact(settings.resolved_database_url)}")


@cli.command()
def api(host: str = "127.0.0.1", port: int = 8000, workers: int = typer.Option(1, min=1, max=64)) -> None:
    """Serve the HTTP API with uvicorn."""
    import uvicorn

    get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False)


@cli.command()
def worker(queues: str = typer.Option(None, help="comma-separated queues; default GRADLAB_QUEUES"),
           loglevel: str = "INFO") -> None:
    """Run one Celery worker process (solo pool: the job runs in this process, which owns its CUDA context)."""
    from workers.app import app
    import workers.tasks  # noqa: F401  (registers the task and the worker signals)

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = ["worker", "-Q", queues or settings.queues, "--pool=solo", "--concurrency=1", f"--loglevel={loglevel}",
            "-n", f"gradlab-{os.getpid()}@%h", "--without-mingle", "--without-gossip"]
    if settings.resolved_broker_url.startswith("filesystem://"):
        argv.append("--without-heartbeat")
    app.worker_main(argv)


@cli.command()
def up(host: str = "127.0.0.1", port: int = 8000, data_dir: Path = typer.Option(Path("data"))) -> None:
    """Embedded all-in-one: SQLite + filesystem broker in DATA_DIR, migrate, one worker process and the API."""
    os.environ["GRADLAB_DATA_DIR"] = str(data_dir.resolve())
    get_settings.cache_clear()
    migrate()
    worker_proc = subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], env=os.environ.copy())
    typer.echo(f"gradlab is up: http://{host}:{port}  (API docs: http://{host}:{port}/docs; data in {data_dir})")
    typer.echo("Ctrl-C stops the API and the worker.")
    try:
        api(host=host, port=port, workers=1)
    finally:
        worker_proc.send_signal(signal.SIGTERM)
        try:
            worker_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_proc.kill()


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
