"""Mutation testing of the technique math (``make mutants``; slow, not part of CI).

For each module below, cosmic-ray makes one mutant per applicable operator and site (an operator swapped, a number
changed, a condition negated, a loop made empty, ...), runs the module's own fast unit tests against each, and counts
a mutant as killed when they fail or time out. One module at a time, one test process at a time: the machine is small
and shared. Each module is mutated in a copy of the tree under ``.mutants/`` (cosmic-ray edits files in place), so an
interrupted run never leaves a mutated file in the working tree.

A module with more mutants than ``--sample`` is sampled: ``--sample`` mutants drawn with ``--seed`` from its
mutant list (the same draw every time while the module is unchanged), the rest marked skipped; the report says so.
Surviving mutants are written with their diffs to ``.mutants/<name>/survivors.txt`` for triage (docs/mutation.md).
``--survivors`` runs only the last run's survivors again, against the current tests (a killed mutant stays killed
while tests are only added); it refuses a module whose source changed since, which needs a full run.

    python mutation/mutants.py                 # every module, default sample
    python mutation/mutants.py eg accum --sample 0   # two modules, all of their mutants
    python mutation/mutants.py --survivors     # after adding tests: the survivors again
    python mutation/mutants.py runs --sample 0 # the kinds' run modules: the functions computing reported figures
    python mutation/mutants.py run:vae_density --without tests/unit/test_reported_figures.py   # "before" score
    python mutation/mutants.py issue33 --sample 6  # data, studies, rollup, summaries, model files (issue 33)
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutants"

# Tests that train, run whole jobs, compile or validate job params are left out: a mutant costs one test process,
# and those either take seconds each or do not reach the module's math. (-k matches substrings: "fused" would also
# drop every test named "...refused...", hence the compiled test's full name.)
SLOW = (
    "not job and not end_to_end and not example and not fused_step_equals_eager_step and not same_seed "
    "and not same_spec "
    "and not uploaded and not timeout and not bad_params and not budget and not divergence and not digits "
    "and not covers_more_modes and not cancellation and not recovery and not optimizers_share "
    "and not large_batch and not cpu_peak and not builtin and not two_tower_job"
)

# name: (module path, its own fast unit-test files)
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "contrastive": (
        "core/contrastive.py",
        ("tests/unit/test_contrastive_accumulation.py", "tests/unit/test_contrastive_checks.py"),
    ),
    "accum": ("core/optim/accum.py", ("tests/unit/test_momentum_accumulation.py", "tests/unit/test_optim_accum.py")),
    "eg": ("core/optim/eg.py", ("tests/unit/test_eg_stepsize.py", "tests/unit/test_optim_eg.py")),
    "gan": ("core/gan.py", ("tests/unit/test_gradnorm_gan.py", "tests/unit/test_gan_math.py")),
    "vae": ("core/vae.py", ("tests/unit/test_vae_density.py", "tests/unit/test_vae_math.py")),
    "penalty": ("core/penalty.py", ("tests/unit/test_gradient_penalty_bound.py", "tests/unit/test_penalty_checks.py")),
    "dimension": ("core/dimension.py", ("tests/unit/test_embedding_dim.py",)),
    "init": ("core/averaged_init.py", ("tests/unit/test_init_averaging.py", "tests/unit/test_init_math.py")),
}

# The kinds' run modules: only the functions that compute the figures a job reports (the rest trains and plots), with
# the kind's own unit tests and the fast tests of those figures.
FIGURES = "tests/unit/test_reported_figures.py"
RUN_FIGURES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "run:momentum_accumulation": (
        "core/techniques/momentum_accumulation/run.py",
        ("tests/unit/test_momentum_accumulation.py",),
        ("_arm_result", "_accumulation_saving", "_best_arm", "_stats", "_finite"),
    ),
    "run:init_averaging": (
        "core/techniques/init_averaging/run.py",
        ("tests/unit/test_init_averaging.py",),
        ("_mean_result", "predicted_ratios"),
    ),
    "run:embedding_dim": (
        "core/techniques/embedding_dim/run.py",
        ("tests/unit/test_embedding_dim.py",),
        ("_dimensions",),
    ),
    "run:eg_stepsize": (
        "core/techniques/eg_stepsize/run.py",
        ("tests/unit/test_eg_stepsize.py",),
        ("_note_recovery", "_settings", "_mean_or_none"),
    ),
    "run:gradient_penalty_bound": (
        "core/techniques/gradient_penalty_bound/run.py",
        ("tests/unit/test_gradient_penalty_bound.py",),
        ("summarize_terms", "_over_training", "_num", "_median"),
    ),
    "run:vae_density": (
        "core/techniques/vae_density/run.py",
        ("tests/unit/test_vae_density.py",),
        ("_summary", "_num"),
    ),
    "run:contrastive_accumulation": (
        "core/techniques/contrastive_accumulation/run.py",
        ("tests/unit/test_contrastive_accumulation.py",),
        ("_step_costs", "_rel_diff"),
    ),
    "run:gradnorm_gan": (
        "core/techniques/gradnorm_gan/run.py",
        ("tests/unit/test_gradnorm_gan.py",),
        ("_step_times", "_thinned", "_clean"),
    ),
}
MODULES.update({name: (module, (FIGURES, *tests)) for name, (module, tests, _) in RUN_FIGURES.items()})

# Issue 33: the code that computes what a user reads of data, studies, metrics and models: dataset previews and
# their figures, studies' statistics and bands, the rollup behind downsampled charts, the kinds' summaries (their
# verdicts at and around each threshold) and the checks of model files. (core/networks' families, spec, inspector,
# budget and checks, and the embedding_dim and init_averaging summaries, are left out while they are rewritten.)
# Each module's tests: the fast new file first (with -x a mutant it kills costs one short process), then the older
# tests that reach the module (a test id ``file::name`` runs only that test: test_summaries trains each kind).
PREVIEWS = "tests/unit/test_dataset_previews.py"
FORMATS = (PREVIEWS, "tests/unit/test_formats.py")
VERDICTS = "tests/unit/test_verdict_thresholds.py"
MODEL_FILES = ("tests/unit/test_model_file_checks.py", "tests/unit/test_model_files.py")
STUDIES = ("tests/unit/test_study_statistics.py", "tests/integration/test_study_bands.py")
SUMMARIZED = (
    "contrastive_accumulation",
    "momentum_accumulation",
    "gradient_penalty_bound",
    "gradnorm_gan",
    "vae_density",
    "eg_stepsize",
)
MODULES.update(
    {
        **{
            f"summary:{kind}": (
                f"core/techniques/{kind}/summary.py",
                (VERDICTS, f"tests/unit/test_summaries.py::test_{kind}"),
            )
            for kind in SUMMARIZED
        },
        "studies:stats": ("core/studies/stats.py", STUDIES),
        "studies:service": ("core/studies/service.py", STUDIES),
        "metrics:rollup": (
            "core/metrics/rollup.py",
            ("tests/unit/test_rollup.py", "tests/integration/test_downsampling.py"),
        ),
        "data:inspection": ("core/data/formats/inspection.py", FORMATS),
        "data:jsonl": ("core/data/formats/jsonl.py", FORMATS),
        "data:tokens": ("core/data/formats/tokens.py", FORMATS),
        "data:arrays": ("core/data/formats/arrays.py", FORMATS),
        "data:loader": ("core/data/loader.py", (PREVIEWS, "tests/unit/test_loader.py")),
        "data:ingest": ("core/data/ingest.py", (PREVIEWS,)),
        "networks:strict_json": ("core/networks/strict_json.py", MODEL_FILES),
        "networks:safetensors_header": ("core/networks/safetensors_header.py", MODEL_FILES),
        "networks:checkpoint": ("core/networks/checkpoint.py", MODEL_FILES),
        "networks:weights": ("core/networks/weights.py", MODEL_FILES),
    }
)
# Modules of which only some functions are mutated (the rest needs a database or a worker to reach).
FUNCTIONS: dict[str, tuple[str, ...]] = {
    **{name: functions for name, (_, _, functions) in RUN_FIGURES.items()},
    "studies:service": ("_check_size", "expand", "bands"),
}
ISSUE_33 = [name for name in MODULES if ":" in name and not name.startswith("run:")]

# Operators left out: swaps into bitwise/shift/modulo operators and identity comparisons on numbers only make the
# code raise a TypeError (killed by any test that runs the line, so they say nothing about the tests), and the
# variable inserter/replacer mutate names at random.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*_(BitAnd|BitOr|BitXor|LShift|RShift|FloorDiv|Mod)$",
    r"core/ReplaceBinaryOperator_(BitAnd|BitOr|BitXor|LShift|RShift|FloorDiv|Mod)_.*",
    r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_(Eq|NotEq|Lt|LtE|Gt|GtE)$",
    r"core/ReplaceUnaryOperator_.*_(Invert|Not)$",
    r"core/VariableInserter",
    r"core/VariableReplacer",
    r"core/ExceptionReplacer",
]


def _config(module: str, tests: list[str], timeout: float) -> str:
    """cosmic-ray's configuration; with no test file (a "before" score of a module no unit test reached) the test
    command passes on every mutant, so each one survives."""
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests, "-k", f"'{SLOW}'"]
    command = " ".join(pytest if tests else [sys.executable, "-c", "pass"])
    excluded = ", ".join(json.dumps(e) for e in EXCLUDED_OPERATORS)
    return (
        f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}\nexcluded-modules = []\n'
        f'test-command = "{command}"\n\n[cosmic-ray.distributor]\nname = "local"\n\n'
        f"[cosmic-ray.filters.operators-filter]\nexclude-operators = [{excluded}]\n"
    )


def _copy_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files of the working tree, copied to ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _function_lines(path: Path, names: tuple[str, ...]) -> set[int]:
    """The source lines of the named top-level functions of a module."""
    tree = ast.parse(path.read_text())
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names}
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"{path}: no function(s) {sorted(missing)}")
    return {line for n in found.values() for line in range(n.lineno, (n.end_lineno or n.lineno) + 1)}


def _keep_lines(db_path: Path, lines: set[int]) -> None:
    """Mark the pending mutants outside ``lines`` skipped (they are not counted)."""
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        outside = [w.job_id for w in db.pending_work_items if w.mutations[0].start_pos[0] not in lines]
        db.set_multiple_results(outside, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def _sample(db_path: Path, size: int, seed: int) -> tuple[int, int]:
    """Mark all but ``size`` pending mutants (drawn with ``seed``) skipped; (mutants, kept)."""
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        pending = sorted(
            db.pending_work_items,
            key=lambda w: (str(w.mutations[0].start_pos), w.mutations[0].operator_name, w.mutations[0].occurrence),
        )
        if size <= 0 or len(pending) <= size:
            return len(pending), len(pending)
        keep = {w.job_id for w in random.Random(seed).sample(pending, size)}
        skipped = [w.job_id for w in pending if w.job_id not in keep]
        db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
        return len(pending), size


def _tally(db_path: Path, survivors_path: Path) -> dict:
    killed = survived = incompetent = 0
    lines = []
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome == TestOutcome.INCOMPETENT:
                incompetent += 1
            elif result.test_outcome == TestOutcome.KILLED:
                killed += 1
            else:
                survived += 1
                m = item.mutations[0]
                lines.append(f"### {m.operator_name} #{m.occurrence} at line {m.start_pos[0]}\n{result.diff}\n")
    survivors_path.write_text("\n".join(lines))
    return {"killed": killed, "survived": survived, "incompetent": incompetent}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_module(
    name: str,
    sample: int,
    seed: int,
    timeout: float,
    survivors_of: dict | None = None,
    without: tuple[str, ...] = (),
) -> dict:
    """One module's run: all (or ``sample``) of its mutants, or with ``survivors_of`` (the last result) only the
    mutants that survived it; ``without``: test files left out (to score the tests as they were before them)."""
    module, tests = MODULES[name]
    tests = [t for t in tests if (ROOT / t.split("::")[0]).exists() and t.split("::")[0] not in without]
    work = SCRATCH / name.replace(":", "-")
    tree = work / "tree"
    _copy_tree(tree)
    config, db = work / "cosmic-ray.toml", work / "session.sqlite"
    config.write_text(_config(module, tests, timeout))
    if survivors_of is None:
        db.unlink(missing_ok=True)
    elif survivors_of.get("source") != _digest(ROOT / module) or not db.exists():
        raise SystemExit(f"{name}: {module} changed since its last run (or it has none): run it in full")
    os.environ["PYTHONPATH"] = str(tree)  # the copy's code, not the working tree's, in every test process
    bin_dir = Path(sys.executable).parent

    def run(*args):
        return subprocess.run([*args], cwd=tree, check=True, capture_output=True)

    started = time.monotonic()
    baseline = subprocess.run(
        _config_command(config), cwd=tree, shell=True, capture_output=True, text=True, check=False
    )
    if baseline.returncode != 0:
        raise SystemExit(f"{name}: the unmutated tests fail, nothing to measure:\n{baseline.stdout[-3000:]}")
    if survivors_of is None:
        run(bin_dir / "cosmic-ray", "init", str(config), str(db))
        run(bin_dir / "cr-filter-operators", str(db), str(config))
        if name in FUNCTIONS:
            _keep_lines(db, _function_lines(ROOT / module, FUNCTIONS[name]))
        total, kept = _sample(db, sample, seed)
    else:
        total, kept = survivors_of["mutants"], survivors_of["sampled"]
        with sqlite3.connect(db) as conn:  # survivors become pending again
            conn.execute("DELETE FROM work_results WHERE worker_outcome = 'NORMAL' AND test_outcome = 'SURVIVED'")
    run(bin_dir / "cosmic-ray", "exec", str(config), str(db))
    counts = _tally(db, work / "survivors.txt")
    done = counts["killed"] + counts["survived"]
    return {
        "module": module,
        "source": _digest(ROOT / module),
        "tests": tests,
        "mutants": total,
        "sampled": kept,
        **counts,
        "score": round(counts["killed"] / done, 3) if done else None,
        "minutes": round((time.monotonic() - started) / 60, 1),
    }


def _config_command(config: Path) -> str:
    """The test command written into ``config`` (run once unmutated: it must pass)."""
    for line in config.read_text().splitlines():
        if line.startswith("test-command"):
            return json.loads(line.split("=", 1)[1].strip())
    raise ValueError("no test-command")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"modules (default: all; runs: every run:…; issue33: the rest): {', '.join(MODULES)}"
    )
    parser.add_argument("--sample", type=int, default=60, help="mutants per module, 0 for all (default 60)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant's test run")
    parser.add_argument("--survivors", action="store_true", help="rerun only the last run's survivors")
    parser.add_argument("--out", type=Path, default=SCRATCH / "scores.json")
    parser.add_argument("--without", nargs="*", default=[], help="test files left out (a 'before' score)")
    args = parser.parse_args()
    groups = {"runs": list(RUN_FIGURES), "issue33": ISSUE_33}
    names = [n for arg in args.names for n in groups.get(arg, [arg])] or list(MODULES)
    unknown = set(names) - set(MODULES)
    if unknown:
        parser.error(f"unknown modules {sorted(unknown)}; known: {', '.join(MODULES)}")
    SCRATCH.mkdir(exist_ok=True)
    scores = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in names:
        if args.survivors and name not in scores:
            raise SystemExit(f"{name}: no earlier run to take the survivors of")
        result = run_module(
            name, args.sample, args.seed, args.timeout, scores[name] if args.survivors else None, tuple(args.without)
        )
        scores[name] = result
        args.out.write_text(json.dumps(scores, indent=1))
        print(
            f"{name:12s} {result['module']:22s} mutants {result['mutants']:4d} sampled {result['sampled']:4d} "
            f"killed {result['killed']:3d} survived {result['survived']:3d} incompetent {result['incompetent']:2d} "
            f"score {result['score']}  ({result['minutes']} min)",
            flush=True,
        )


if __name__ == "__main__":
    main()
