#!/bin/bash
# Copy what scripts/gpu/run_gpu.sh needs into DEST/.gpu (DEST: the checkout the device tool
# sends; its .git/info/exclude must list /.gpu/): this branch's code, the wheels in WHEELS, and
# the config and tokenizer of the Gemma folder HF.
#   scripts/gpu/prepare.sh DEST HF WHEELS
set -eu
dest=$1/.gpu hf=$2 wheels=$3
rm -rf "$dest/src" "$dest/hf" && mkdir -p "$dest/src" "$dest/hf" "$dest/whl"
cp -r turnout tests bench scripts pyproject.toml "$dest/src/"
find "$dest/src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$dest/src/bench/results"
cp "$hf"/config.json "$hf"/tokenizer* "$hf"/generation_config.json "$dest/hf/"
[ "$wheels" = "$dest/whl" ] || cp "$wheels"/*.whl "$dest/whl/"
cp scripts/gpu/run_gpu.sh "$dest/run_gpu.sh"
du -sh "$dest"
