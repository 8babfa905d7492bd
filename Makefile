# One target per habit. `make test` is what .ci/run runs; `make run` starts the whole system.
VENV ?= .venv
PYTHON ?= python3
SOURCES := projector api harness tests bench scripts

.PHONY: test lint typecheck bench soak run down clean system-run system-test system-bench

# `make run` needs the runtime dependencies only (a fresh clone is up in seconds, not after
# installing the test tools); every other habit needs the dev extras too.
$(VENV)/.installed-run: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

# Server binaries and tools first (apt-get as root; otherwise the one command to run).
system-run:
	@bash scripts/ensure_system.sh run

system-test:
	@bash scripts/ensure_system.sh test

system-bench:
	@bash scripts/ensure_system.sh bench

# Two workers (each starts its own servers on free ports): the suite is mostly waiting.
test: system-test $(VENV)/.installed
	$(VENV)/bin/pytest -p no:cacheprovider -n 2

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

bench: system-bench $(VENV)/.installed
	$(VENV)/bin/python bench/run_all.py

# The randomized fault soak: `make soak ROUNDS=250 SEED=42`. Round i uses seed SEED+i, so a
# failing round replays alone with `make soak SEED=<its seed> ROUNDS=1`. Without SEED the
# base seed is random (printed). Each run is added to bench/results/soak.json.
ROUNDS ?= 20
SEED ?=
soak: $(VENV)/.installed
	$(VENV)/bin/python -m tests.soak --rounds $(ROUNDS) $(if $(SEED),--seed $(SEED)) \
		--out bench/results/soak.json

run: system-run $(VENV)/.installed-run
	$(VENV)/bin/python scripts/run_local.py

# Stop the local servers that `make run` started (their data stays in .run/).
down: $(VENV)/.installed-run
	$(VENV)/bin/python scripts/servers.py down --dir .run

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
