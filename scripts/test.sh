#!/usr/bin/env bash
# One command from a fresh clone: install turnout with every extra and the test tools, then run
# the format check, the linter, the type checker and the whole test suite (slow tests included:
# they start real llama.cpp servers on the Gemma 3 270M GGUF). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "turnout needs Python 3.11 or newer" >&2; exit 1; }
# PostgreSQL 15 and Redis from Debian's packages: the teams tests (tests/access) start a throwaway
# cluster and a redis-server of their own. Installed only when missing, and only as root.
if ! { command -v redis-server >/dev/null && { command -v initdb >/dev/null \
        || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
  else
    echo "tests/access need PostgreSQL and redis-server: apt-get install postgresql redis-server" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
.venv/bin/python -m pip install --quiet --upgrade pip
# Exactly the versions tested, each checked against its hash (scripts/lock.sh makes the lock).
.venv/bin/python -m pip install --quiet --require-hashes -r requirements.lock
.venv/bin/python -m pip install --quiet --no-deps -e .
# The browser tests (the dashboard, the guard) drive Debian's chromium through chromedriver;
# systemd-analyze (the unit's check) comes with systemd.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "the browser tests need Debian's chromium and chromium-driver:" \
      "sudo apt-get install chromium chromium-driver" >&2
  fi
fi
echo "== ruff format --check"; .venv/bin/ruff format --check turnout tests bench
echo "== ruff check";          .venv/bin/ruff check turnout tests bench
echo "== mypy";                .venv/bin/mypy
echo "== pytest";              .venv/bin/pytest "$@"
