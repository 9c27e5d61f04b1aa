"""transformers on PyTorch (CPU here): safetensors models, generated one token at a time.

A model is a Hugging Face folder (``config.json``, tokenizer files, safetensors shards) or one
``.safetensors`` file beside a ``config.json`` and a tokenizer. Generation is a plain loop over
the model's forward pass with its KV cache (``past_key_values``), one token per step, so the
engine stops between two tokens when the client leaves; sampling uses transformers' own logits
warpers (temperature, top-k, top-p) and a per-request ``torch.Generator`` for ``seed``.
bfloat16 weights are computed in bfloat16 where the CPU has native bf16 instructions
(``avx512_bf16``/``amx_bf16``, as this machine's): on one thread here Gemma 3 270M generated
16 tokens in 1.2-1.3 s in bf16 against 1.6-1.8 s in float32, and the process took 930 MiB
against 1,433. Elsewhere, and for float16 weights (Gemma overflows in it), float32.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from ...errors import BackendError
from ..base import JSON
from .llama_engine import LoadCancelled
from .settings import EmbeddedModel
from .thread_engine import Sampling, ThreadEngine, chat_turns, require_packages

__all__ = ["PACKAGES", "TransformersEngine"]

_MB = 1024 * 1024
#: what this engine imports, and the pip extra that installs them
PACKAGES = ("torch", "transformers")
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _config(folder: Path) -> JSON:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    text = data.get("text_config")  # multimodal configs keep the language model's numbers here
    return {**data, **text} if isinstance(text, dict) else data if isinstance(data, dict) else {}


def _compute_dtype(stored: str | None) -> str:
    """bfloat16 weights stay bfloat16 on a CPU with native bf16 instructions, float16 and the
    rest are computed in float32 (see the module's docstring)."""
    if stored == "bfloat16":
        with contextlib.suppress(OSError):
            flags = Path("/proc/cpuinfo").read_text()
            if "avx512_bf16" in flags or "amx_bf16" in flags:
                return stored
    return "float32" if stored in (None, "bfloat16", "float16") else stored


class TransformersEngine(ThreadEngine):
    kind: ClassVar[str] = "transformers"
    sampling_fields: ClassVar[frozenset[str]] = frozenset(
        {"logit_bias", "presence_penalty", "frequency_penalty"}
    )

    def __init__(self, entry: EmbeddedModel, resolve: Callable[[], Path]) -> None:
        super().__init__(entry, resolve)
        self.model: Any = None
        self.tokenizer: Any = None
        self.dtype: str | None = None
        self._eos: set[int] = set()
        self._sample_default = False

    @staticmethod
    def folder_of(path: Path) -> Path:
        return path if path.is_dir() else path.parent

    def estimate_bytes(self, path: Path) -> int:
        """Weights at the dtype they are computed in, and 60% more: the first forward pass
        makes packed copies for the CPU kernels (Gemma 3 270M in bf16 here, a 511 MiB file:
        the process grew 405 MiB on loading and 930 MiB after one generation; this says 982
        MiB at n_ctx 2048); a KV cache of ``n_ctx`` tokens; 128 MiB for the runtime's buffers."""
        folder = self.folder_of(path)
        cfg = _config(folder)
        files = [path] if path.is_file() else sorted(folder.glob("*.safetensors"))
        on_disk = sum(p.stat().st_size for p in files if p.is_file())
        stored = cfg.get("dtype") or cfg.get("torch_dtype")
        computed = _compute_dtype(stored if isinstance(stored, str) else None)
        weights = on_disk * _BYTES.get(computed, 4) // _BYTES.get(str(stored), _BYTES[computed])
        layers, heads = cfg.get("num_hidden_layers") or 0, cfg.get("num_key_value_heads") or 0
        head_dim = cfg.get("head_dim") or (
            (cfg.get("hidden_size") or 0) // (cfg.get("num_attention_heads") or 1)
        )
        kv = layers * heads * head_dim * 2 * self.entry.n_ctx * _BYTES.get(computed, 4)
        return int(weights * 1.6 + kv + 128 * _MB)

    # Loading.

    def _load_blocking(
        self, path: Path, progress: Callable[[float], None], cancel: threading.Event
    ) -> None:
        require_packages(PACKAGES, self.kind)
        folder = self.folder_of(path)
        if not (folder / "config.json").is_file():
            raise BackendError(
                f"model '{self.entry.name}': the transformers engine needs a config.json beside "
                f"{path.name} (a Hugging Face folder)"
            )

        def step(fraction: float) -> None:
            if cancel.is_set():
                raise LoadCancelled
            progress(fraction)

        step(0.02)
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        # Its per-load console bars would only clutter the gateway's log (a process-wide switch;
        # nothing else in the gateway wants them).
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        # torch's thread pool is process-wide: the last model loaded sets it.
        torch.set_num_threads(self.entry.n_threads or os.cpu_count() or 1)
        step(0.1)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        step(0.3)
        config = AutoConfig.from_pretrained(folder)
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        self.dtype = _compute_dtype(str(stored).removeprefix("torch.") if stored else None)
        with _weights_folder(folder, path) as weights:
            model = AutoModelForCausalLM.from_pretrained(weights, dtype=getattr(torch, self.dtype))
        self.model = model.eval()  # type: ignore[no-untyped-call]
        step(0.9)
        archs = getattr(config, "architectures", None) or [getattr(config, "model_type", "")]
        self.architecture = str(archs[0])
        self._eos = _eos_ids(model, self.tokenizer)
        self._sample_default = bool(getattr(model.generation_config, "do_sample", False))
        step(0.95)
        _warm_up(model, torch)

    def _unload_blocking(self) -> None:
        self.model = self.tokenizer = None
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # hand freed pages back to the system
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    # Prompts and generation.

    def _own_prompt(self, messages: list[JSON]) -> list[int] | None:
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        turns = [{"role": role, "content": text} for role, text in chat_turns(messages)]
        out = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if not isinstance(out, list) else out
        return [int(i) for i in ids]

    def _encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def _tokens(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[str]:
        import torch

        model, pick = self.model, self._picker(sampling)
        decode = _Detokenizer(self.tokenizer, prompt_ids[-4:])
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True, logits_to_keep=1)
            adjust = _Adjust(sampling, out.logits.shape[-1])
            while True:
                token = pick(adjust(out.logits[:, -1, :].float()))
                if token in self._eos:
                    return
                adjust.seen(token)
                yield decode.add(token)
                out = model(
                    input_ids=torch.tensor([[token]]),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )

    def _picker(self, sampling: Sampling) -> Callable[[Any], int]:
        """Greedy when asked (temperature 0) or when the model samples by default and the
        request says nothing; else sampling through transformers' warpers."""
        import torch
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        temperature = sampling.temperature
        if temperature == 0 or (temperature is None and not self._sample_default):

            def greedy(logits: Any) -> int:
                return int(logits.argmax(dim=-1).item())

            return greedy
        warpers = LogitsProcessorList()
        if temperature is not None and temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if sampling.top_k:
            warpers.append(TopKLogitsWarper(int(sampling.top_k)))
        if sampling.top_p is not None and sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(sampling.top_p)))
        generator = (
            torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        )

        none: Any = torch.empty((1, 0), dtype=torch.long)  # these warpers read no ids

        def sample(logits: Any) -> int:
            probs = torch.softmax(warpers(none, logits), dim=-1)
            return int(torch.multinomial(probs, 1, generator=generator).item())

        return sample


def _warm_up(model: Any, torch: Any) -> None:
    """One short prefill and two decoding steps while loading: PyTorch prepares its CPU kernels
    on the first passes (here 0.4-0.6 s for a 2-token prefill and up to 0.5 s a step, against
    0.1 s once warm), a cost that belongs to loading rather than to the first request."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[2, 3, 4, 5]]), use_cache=True, logits_to_keep=1)
        for _ in range(2):
            out = model(
                input_ids=torch.tensor([[5]]), past_key_values=out.past_key_values, use_cache=True
            )


@contextlib.contextmanager
def _weights_folder(folder: Path, path: Path) -> Iterator[Path]:
    """The folder to load: the model's own, or for a lone ``.safetensors`` file not named as
    transformers expects, a temporary folder linking it as ``model.safetensors`` beside the
    folder's other files (config, tokenizer)."""
    if path.is_dir() or path.name == "model.safetensors":
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="turnout-weights-") as tmp:
        for item in folder.iterdir():
            if (
                item.is_file()
                and item.suffix != ".safetensors"
                and not item.name.endswith(".safetensors.index.json")
            ):
                (Path(tmp) / item.name).symlink_to(item.resolve())
        (Path(tmp) / "model.safetensors").symlink_to(path.resolve())
        yield Path(tmp)


class _Adjust:
    """OpenAI's ``logit_bias`` and presence/frequency penalties on one step's logits: the bias
    added as given, each penalty subtracted per token already generated (frequency: times its
    count; presence: once)."""

    def __init__(self, sampling: Sampling, vocab: int) -> None:
        import torch

        self.bias = None
        if sampling.logit_bias:
            sampling.check_vocabulary(vocab)
            self.bias = torch.zeros(vocab)
            for token, value in sampling.logit_bias.items():
                self.bias[token] = value
        self.presence, self.frequency = sampling.presence_penalty, sampling.frequency_penalty
        self.counts = torch.zeros(vocab) if self.presence or self.frequency else None

    def __call__(self, logits: Any) -> Any:
        if self.bias is not None:
            logits = logits + self.bias
        if self.counts is not None:
            logits = logits - self.frequency * self.counts - self.presence * (self.counts > 0)
        return logits

    def seen(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


class _Detokenizer:
    """Text of each new token, decoded with the tokens before it: a piece that ends inside a
    multi-byte character, or a word-start marker, shows only once the next token completes it."""

    def __init__(self, tokenizer: Any, context: list[int]) -> None:
        # A few prompt tokens before the first new one, so its leading space survives decoding.
        self.tokenizer, self.ids = tokenizer, list(context)
        self.prefix, self.read = 0, len(context)  # ids[prefix:read]: decoded and shown already

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=False)
        text = decode(self.ids[self.prefix :], skip_special_tokens=False)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return str(text[len(before) :])
