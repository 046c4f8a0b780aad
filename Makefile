# The README's two commands: `make demo` and `make test`. Each installs what it
# needs first (scripts/install.sh is a no-op when .venv matches the lock).
PY := .venv/bin/python
export TF_USE_LEGACY_KERAS := 1
export PYTHONHASHSEED := 0

.PHONY: install demo test lint format lock clean

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m tfx_captioning.cli.pipeline_cli run

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint
	$(PY) -m pytest

format: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

# Re-resolve and re-pin every dependency (needs the package index).
lock:
	bash scripts/lock.sh

clean:
	rm -rf build .pytest_cache
