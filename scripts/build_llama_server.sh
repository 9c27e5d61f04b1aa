#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` once, from the llama.cpp source vendored in the sdist of the
# llama-cpp-python version installed in .venv, and cache it. Prints the binary's path as the last
# line of stdout (build output goes to stderr). Exits at once when the cached binary exists.
#
#   bash scripts/build_llama_server.sh            # version of the llama-cpp-python in .venv
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 bash scripts/build_llama_server.sh
#   LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON" bash scripts/build_llama_server.sh   # a CUDA build (needs nvcc)
#
# A build with LLAMA_CMAKE_ARGS is cached apart, in <version>-cuda (GGML_CUDA) or <version>-custom.
#
# Output: ${TURNOUT_CACHE:-~/.cache/turnout}/llama-server/<llama-cpp-python version>/llama-server
# (statically linked, so the cached file runs on its own). About 5 minutes on 2 cores. Several
# callers at once are serialised by a lock: the second waits, then finds the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

python=.venv/bin/python
[ -x "$python" ] || python=python3
version="${LLAMA_CPP_PYTHON_VERSION:-$("$python" -c \
  'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)}"
version="${version:-0.3.36}"
extra="${LLAMA_CMAKE_ARGS:-}"
variant=""
if [ -n "$extra" ]; then
  case "$extra" in *GGML_CUDA=ON*|*GGML_CUDA=on*) variant="-cuda" ;; *) variant="-custom" ;; esac
fi
dir="${TURNOUT_CACHE:-$HOME/.cache/turnout}/llama-server/$version$variant"
bin="$dir/llama-server"

if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9                      # another build of the same version may be running: wait for it
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi

for tool in cmake c++ cc; do
  command -v "$tool" >/dev/null || { echo "building llama-server needs $tool" >&2; exit 1; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "== downloading the llama-cpp-python $version source package" >&2
"$python" -m pip download --quiet --no-deps --no-binary :all: \
  "llama-cpp-python==$version" -d "$work/sdist" >&2
tar -xzf "$work"/sdist/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
[ -f "$src/CMakeLists.txt" ] || { echo "no vendored llama.cpp in the sdist" >&2; exit 1; }

echo "== configuring llama.cpp (from $src)" >&2
# LLAMA_USE_PREBUILT_UI=OFF: otherwise the build tries to download the web UI.
# BUILD_SHARED_LIBS=OFF: one self-contained binary that can live in the cache on its own.
cmake -S "$src" -B "$work/build" \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release $extra >&2
echo "== building llama-server (about 5 minutes on 2 cores)" >&2
cmake --build "$work/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >&2

built="$work/build/bin/llama-server"
[ -x "$built" ] || { echo "the build did not produce $built" >&2; exit 1; }
"$built" --version >&2 || true
cp "$built" "$bin.tmp"
mv "$bin.tmp" "$bin"          # atomic: a reader never sees half a binary
echo "$bin"
