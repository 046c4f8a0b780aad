# The README's two commands: `make demo` and `make test`. Each installs what it
# needs first (scripts/install.sh is a no-op when .venv matches the lock).
# While iterating: `make test-fast` (the `fast` tier, tests only) and
# `make test-random` (shuffled order).
PY := .venv/bin/python
export TF_USE_LEGACY_KERAS := 1
export PYTHONHASHSEED := 0

.PHONY: install demo test test-fast test-random lint format lock clean

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m tfx_captioning.cli.pipeline_cli run

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# Everything: lint and every test, slow ones included (what CI runs).
test: lint
	$(PY) -m pytest

# Tests tests/conftest.py marks `fast`: not slow, no expensive fixture (< 3 min).
test-fast: install
	$(PY) -m pytest -m fast

# The non-slow tests in a shuffled order (pytest-randomly, off by default). The
# header prints the seed; `make test-random SEED=N` replays that order.
test-random: install
	$(PY) -m pytest -p randomly -p no:cacheprovider -m "not slow" $(if $(SEED),--randomly-seed=$(SEED))

format: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# Re-resolve and re-pin every dependency (needs the package index).
lock:
	bash scripts/lock.sh

clean:
	rm -rf build .pytest_cache
