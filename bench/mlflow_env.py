"""MLflow for the API comparison, in a virtual environment of its own: ``bench/.mlflow-venv``.

MLflow 3 cannot install beside the project (it needs pyarrow < 26; the project's lock pins 26.0.1), so the benchmark
runs the MLflow server from a separate venv built from ``bench/mlflow-requirements.txt``: the ``pip freeze`` of
``MLFLOW`` and ``PSYCOPG`` (MLflow's PostgreSQL driver) installed together. Only the server runs there;
``bench.api_load`` talks to it over HTTP. The venv is rebuilt when the requirements file changes (its hash is kept
in the venv).

    python -m bench.mlflow_env           # build the venv if it is missing or stale (a few minutes, once)
    python -m bench.mlflow_env --lock    # resolve MLFLOW and PSYCOPG afresh into bench/mlflow-requirements.txt
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".mlflow-venv"
REQUIREMENTS = HERE / "mlflow-requirements.txt"
STAMP = VENV / ".requirements-sha256"
MLFLOW = "mlflow==3.17.2"
PSYCOPG = "psycopg[binary]==3.3.9"  # the project's pin (constraints.txt)
HEADER = (
    "# The MLflow server's own environment for bench.api_load (bench/.mlflow-venv), kept apart from the project's\n"
    "# lock: MLflow 3 needs pyarrow < 26. Written by `python -m bench.mlflow_env --lock` (pip freeze of {pins}).\n"
)


def executable(venv: Path = VENV) -> Path:
    return venv / "bin" / "mlflow"


def version() -> str:
    """The MLflow version the requirements file pins."""
    for line in REQUIREMENTS.read_text().splitlines():
        if line.startswith("mlflow=="):
            return line.removeprefix("mlflow==")
    raise RuntimeError(f"{REQUIREMENTS} pins no mlflow")


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def is_current() -> bool:
    return executable().exists() and STAMP.exists() and STAMP.read_text() == _digest()


def _pip(venv: Path, *args: str) -> str:
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return proc.stdout


def _new_venv(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)


def ensure() -> Path:
    """The ``mlflow`` command of a venv that holds exactly the pinned set, building the venv first when needed."""
    if is_current():
        return executable()
    print(f"building {VENV.relative_to(HERE.parent)} from {REQUIREMENTS.name} (a few minutes, once)", flush=True)
    _new_venv(VENV)
    _pip(VENV, "install", "-q", "--no-deps", "-r", str(REQUIREMENTS))
    _pip(VENV, "check")  # the freeze is complete: every requirement of every pinned package is there
    STAMP.write_text(_digest())
    return executable()


def lock() -> None:
    """Resolve the top-level pins in a scratch venv and write its freeze as the requirements file."""
    with tempfile.TemporaryDirectory(prefix="gradlab-mlflow-lock-") as tmp:
        venv = Path(tmp) / "venv"
        _new_venv(venv)
        _pip(venv, "install", "-q", MLFLOW, PSYCOPG)
        frozen = _pip(venv, "freeze")
    REQUIREMENTS.write_text(HEADER.format(pins=f"{MLFLOW}, {PSYCOPG}") + frozen)
    print(f"wrote {REQUIREMENTS} ({len(frozen.splitlines())} packages, {MLFLOW})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", action="store_true", help="re-resolve the pins into bench/mlflow-requirements.txt")
    args = ap.parse_args()
    if args.lock:
        lock()
    print(f"MLflow {version()}: {ensure()}")


if __name__ == "__main__":
    main()
