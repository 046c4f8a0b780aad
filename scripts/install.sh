#!/usr/bin/env bash
# Creates .venv with Python 3.10 and installs the project with every version
# pinned by requirements.lock. Re-running is a no-op (a second or so) while
# the lock, requirements.txt and setup.py are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  # pyenv's python3.10 shim refuses to run unless a 3.10 version is selected,
  # so ask pyenv for its newest installed 3.10 first; fall back to a plain
  # python3.10 (a system or distribution install) on other machines.
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10\.[0-9]+$' | sort -t. -k3 -n | tail -n1 || true)
    if [ -n "$v" ]; then
      echo "env PYENV_VERSION=$v $(pyenv root)/versions/$v/bin/python3.10"
      return
    fi
  fi
  # pyenv installed but not on PATH (non-interactive shells).
  local found
  found=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V | tail -n1 || true)
  if [ -n "$found" ]; then
    echo "$found"
    return
  fi
  for candidate in python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "install: Python 3.10 not found (TFX 1.16 needs it). Install it, e.g. 'pyenv install 3.10' or your distribution's python3.10 + python3.10-venv." >&2
  exit 1
}

if [ "${1:-}" = "--print-python" ]; then find_python; exit 0; fi

VENV=${VENV:-.venv}
STAMP="$VENV/.install-stamp"
want=$(cat requirements.txt requirements.lock setup.py | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "install: $VENV is up to date with requirements.lock"
  exit 0
fi


if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
  PY=$(find_python)
  echo "install: creating $VENV with $PY"
  rm -rf "$VENV"
  $PY -m venv "$VENV"
fi

echo "install: installing pinned dependencies from requirements.lock (first time: several minutes)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip==24.2"
# The lock is a constraints file: it pins every transitive version, while
# requirements.txt names what the project asks for.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c requirements.lock -r requirements.txt
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
"$VENV/bin/python" -m pip check || echo "install: pip check reported conflicts inherited from TFX's pins (see README, Known limits)"
echo "$want" > "$STAMP"
echo "install: done"
