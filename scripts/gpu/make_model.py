"""A test model for the GPU machine, where nothing can be downloaded: a Hugging Face folder with
the configuration and tokenizer files of SRC (Gemma 3 270M's, from the folder transformers
converts its GGUF to) and random bfloat16 weights (seed 0).

    python scripts/gpu/make_model.py SRC DST
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "generation_config.json", "chat_template.jinja",
)  # fmt: skip


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(src)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dst)
    for name in FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    params = sum(p.numel() for p in model.parameters())
    print(f"{dst}: {config.model_type}, {params / 1e6:.0f}M parameters, random bf16 weights")  # noqa: T201


if __name__ == "__main__":
    main()
