#!/bin/bash
# Issue 17's checks on the GPU machine, in one call (see docs/benchmarks.md, "GPU").
#
# Layout it expects, copied beside the repository as .gpu/ (scripts/gpu/prepare.sh does it):
#   .gpu/src/   turnout/, tests/, bench/, scripts/ and pyproject.toml of the branch
#   .gpu/whl/   wheels of turnout's dependencies the machine lacks (no registry there)
#   .gpu/hf/    config.json and tokenizer files of Gemma 3 270M (the weights are made there)
# Everything it prints goes to $OUT too.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
G=$PWD/.gpu
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$G"/whl/*.whl || exit 1
export PYTHONPATH=$G/src:/tmp/site
{
    nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version,compute_cap --format=csv
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
    nproc
} 2>&1 | tee "$OUT/env.txt"
python3 "$G/src/scripts/gpu/make_model.py" "$G/hf" /tmp/gpu-model 2>&1 | tee "$OUT/model.txt"
export GPU_TEST_MODEL=/tmp/gpu-model
cd "$G/src" || exit 1
echo "== bench: python bench/gpu_engine.py /tmp/gpu-model --tokens 128 --streams 64"
timeout "${BENCH_TIMEOUT:-260}" python3 bench/gpu_engine.py /tmp/gpu-model --tokens 128 --streams 64 \
    --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
echo "== doctor"
mkdir -p /tmp/models && ln -sfn /tmp/gpu-model /tmp/models/gemma-random
COLUMNS=200 timeout 60 python3 -m turnout doctor --dir /tmp/models 2>&1 | tee "$OUT/doctor.txt"
echo "== bench-engines (the transformers engine picks cuda by itself: device auto)"
COLUMNS=200 timeout 150 python3 -m turnout bench-engines /tmp/gpu-model --max-tokens 128 --runs 3 \
    2>&1 | tee "$OUT/bench_engines.txt"
echo "== gpu tests"
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout "${TEST_TIMEOUT:-150}" python3 -m pytest \
    -p pytest_asyncio.plugin -p pytest_timeout -m gpu tests/gpu -q -rs -p no:cacheprovider \
    2>&1 | tee "$OUT/pytest.txt"
echo "== summary"
tail -9 "$OUT/bench.txt"
tail -6 "$OUT/bench_engines.txt"
tail -3 "$OUT/pytest.txt"
