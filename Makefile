# The two commands: `make run` (the service on the embedded default) and `make test` (the whole suite).
# Every install takes its versions from constraints.txt (the resolved set, torch included); `make lock` rewrites it.
# `make mutants` is the slow mutation testing (docs/mutation.md): the technique math, summaries, statistics, data and
# model-file checks; not part of CI.
VENV ?= .venv
# `make run HOST=0.0.0.0 PORT=8080 DATA_DIR=/srv/gradlab`: where `gradlab up` listens and keeps its data (set on the
# command line; a HOST or PORT in the environment is not taken). A HOST beyond loopback needs GRADLAB_AUTH=required.
HOST = 127.0.0.1
PORT = 8000
DATA_DIR = data
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MUTATION_STAMP := $(VENV)/.mutation-stamp

.PHONY: install run test lint lock mutants

$(STAMP): pyproject.toml constraints.txt api/vendor/package-lock.json
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q "$$(grep '^torch==' constraints.txt)"
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	npm ci --prefix api/vendor --no-audit --no-fund || echo "npm ci failed: the pages' charts (uPlot) and /docs, /redoc are missing"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gradlab up --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: $(STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

lock: $(STAMP)
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^gradlab' | sed 's/+cpu$$//' > constraints.txt

$(MUTATION_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,mutation]'
	touch $(MUTATION_STAMP)

# One module at a time (ARGS: module names, --sample N, --survivors; see mutation/mutants.py).
mutants: $(MUTATION_STAMP)
	$(PY) mutation/mutants.py $(ARGS)

# The API comparison with MLflow end to end (docs/benchmarks.md): PostgreSQL and Redis on loopback as for the tests;
# MLflow runs from its own venv (bench/.mlflow-venv, built from bench/mlflow-requirements.txt when missing), the load
# from wrk where it is on PATH, with 10,000 jobs waiting in the queue. ARGS: more bench.api_load options.
BENCH_STAMP := $(VENV)/.bench-stamp
.PHONY: bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m bench.mlflow_env
	$(PY) -m bench.api_load $(ARGS)
