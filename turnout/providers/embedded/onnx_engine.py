"""ONNX models served in-process by onnxruntime-genai (CPU here): a `ThreadEngine` whose tokens
come from ``og.Generator`` one at a time and are decoded by the tokenizer's incremental stream.

A model is an onnxruntime-genai folder (``genai_config.json`` beside ``model.onnx`` and its
tokenizer files), as `turnout.models.onnx_build` writes it; a ``.onnx`` file inside such a
folder names the folder. The tokenizer decodes special tokens (``<end_of_turn>``, ``<eos>``) to
nothing, so the stop strings of the chat template would never be seen in the text: generation
ends on the token ids instead (the model's end-of-sequence ids and every template stop string
that is one token).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError
from ..base import JSON
from .llama_engine import LoadCancelled
from .thread_engine import Sampling, ThreadEngine, chat_turns, require_packages

__all__ = ["OnnxEngine", "model_folder"]

_MB = 1024 * 1024
#: the runtime's buffers beyond the files and the KV cache (see `OnnxEngine.estimate_bytes`)
_OVERHEAD = 32 * _MB


def model_folder(path: Path) -> Path:
    """The onnxruntime-genai folder ``path`` is, or holds when it is one of its ``.onnx``
    files; a clear error when there is no ``genai_config.json``."""
    folder = path if path.is_dir() else path.parent
    if not (folder / "genai_config.json").is_file():
        raise ConfigError(
            f"{path} is not an onnxruntime-genai model: {folder} has no genai_config.json "
            "(build one with: turnout models convert SRC DST --to onnx)"
        )
    return folder


def _genai_config(folder: Path) -> JSON:
    try:
        data = json.loads((folder / "genai_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / 'genai_config.json'}: not readable JSON ({exc})") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise ConfigError(f"{folder / 'genai_config.json'} has no 'model' section")
    return model


def _chat_template(folder: Path) -> str | None:
    """The chat template the model's tokenizer files bring: ``chat_template.jinja``, else
    ``tokenizer_config.json``'s ``chat_template`` (the ``default`` one of a named list)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text() or None
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


class _Adjust:
    """OpenAI's ``logit_bias`` and presence/frequency penalties on the logits of each step,
    before the runtime's search picks the token: the bias added as given, each penalty
    subtracted per token generated so far (frequency: times its count; presence: once)."""

    def __init__(self, sampling: Sampling, vocab: int) -> None:
        import numpy as np

        self.bias: Any = None
        if sampling.logit_bias:
            sampling.check_vocabulary(vocab)
            self.bias = np.zeros(vocab, dtype=np.float32)
            for token, value in sampling.logit_bias.items():
                self.bias[token] = value
        self.presence, self.frequency = sampling.presence_penalty, sampling.frequency_penalty
        penalized = self.presence or self.frequency
        self.counts: Any = np.zeros(vocab, dtype=np.float32) if penalized else None
        self.active = self.bias is not None or self.counts is not None

    def __call__(self, logits: Any) -> Any:
        # logits: (batch, tokens, vocab); the last axis lines up with bias and counts
        out = logits
        if self.bias is not None:
            out = out + self.bias
        if self.counts is not None:
            out = out - self.frequency * self.counts - self.presence * (self.counts > 0)
        return out.astype(logits.dtype, copy=False)  # the runtime takes back its own type

    def seen(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1


def _trim_heap() -> None:
    """Give freed memory back to the system. glibc keeps what the runtime freed in its arenas:
    after unloading Gemma 3 270M the process still held 217 MB of the 522 MB the model and
    tokenizer took, and 30 MB after ``malloc_trim``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


class OnnxEngine(ThreadEngine):
    """One ONNX model in onnxruntime-genai: a model, its tokenizer, one generator per request."""

    kind: ClassVar[str] = "onnx"
    sampling_fields: ClassVar[frozenset[str]] = frozenset(
        {"logit_bias", "presence_penalty", "frequency_penalty"}
    )

    model: Any = None
    tokenizer: Any = None
    stop_ids: frozenset[int] = frozenset()
    context_length: int | None = None
    window: int = 0  # sliding-window layers need a KV cache at least this long
    vocab: int = 0
    chat_template: str | None = None  # the model's own, from its tokenizer files

    def _load_blocking(
        self, path: Path, progress: Callable[[float], None], cancel: threading.Event
    ) -> None:
        require_packages(("onnxruntime_genai",), self.kind)
        import onnxruntime_genai as og

        folder = model_folder(path)
        meta = _genai_config(folder)
        config = og.Config(str(folder))
        if self.entry.n_threads:
            options = {"session_options": {"intra_op_num_threads": self.entry.n_threads}}
            config.overlay(json.dumps({"model": {"decoder": options}}))
        progress(0.05)
        if cancel.is_set():
            raise LoadCancelled
        self.model = og.Model(config)  # reads and prepacks the weights: nearly all the time
        progress(0.9)
        if cancel.is_set():
            raise LoadCancelled
        self.tokenizer = og.Tokenizer(self.model)
        # Tokenize as the model's tokenizer does by default (Gemma's adds BOS); off by default
        # in onnxruntime-genai.
        self.tokenizer.update_options(add_special_tokens="true")
        self.architecture = meta.get("type") if isinstance(meta.get("type"), str) else None
        ctx = meta.get("context_length")
        self.context_length = ctx if isinstance(ctx, int) and ctx > 0 else None
        window = (meta.get("decoder") or {}).get("sliding_window") or {}
        self.window = int(window.get("window_size") or 0) if isinstance(window, dict) else 0
        self.stop_ids = self._stop_ids(meta)
        vocab = meta.get("vocab_size")
        self.vocab = vocab if isinstance(vocab, int) and vocab > 0 else 0
        self.chat_template = _chat_template(folder)

    def _stop_ids(self, meta: JSON) -> frozenset[int]:
        ids = {int(i) for i in self.tokenizer.eos_token_ids}
        eos = meta.get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        for text in self._template().stop:
            encoded = [int(i) for i in self.tokenizer.encode(text)]
            bos = self.tokenizer.bos_token_id
            encoded = encoded[1:] if encoded[:1] == [bos] else encoded
            if len(encoded) == 1:  # a special token: it decodes to nothing
                ids.add(encoded[0])
        return frozenset(ids)

    def _unload_blocking(self) -> None:
        self.tokenizer = None
        self.model = None
        gc.collect()  # the model's native memory goes with its last reference
        _trim_heap()

    def _encode(self, text: str) -> list[int]:
        ids = [int(i) for i in self.tokenizer.encode(text)]
        bos = self.tokenizer.bos_token_id
        if len(ids) > 1 and ids[0] == ids[1] == bos:
            ids.pop(0)  # the template wrote BOS and the tokenizer added one
        return ids

    def _own_prompt(self, messages: list[JSON]) -> list[int] | None:
        if not self.chat_template:
            return None
        turns = [{"role": role, "content": text} for role, text in chat_turns(messages)]
        text = self.tokenizer.apply_chat_template(
            json.dumps(turns), template_str=self.chat_template, add_generation_prompt=True
        )
        return self._encode(str(text))

    def _search_options(self, prompt: int, sampling: Sampling) -> JSON:
        ceiling = min(self.entry.n_ctx, self.context_length or self.entry.n_ctx)
        # The KV cache is sized by max_length; windowed layers refuse one shorter than the window.
        options: JSON = {
            "max_length": min(ceiling, max(prompt + sampling.max_tokens, self.window)),
            "batch_size": 1,
        }
        if sampling.temperature is not None:
            options["do_sample"] = sampling.temperature > 0
            if sampling.temperature > 0:
                options["temperature"] = float(sampling.temperature)
        if sampling.top_p is not None:
            options["top_p"] = float(sampling.top_p)
        if sampling.top_k is not None:
            options["top_k"] = int(sampling.top_k)
        if sampling.seed is not None:
            options["random_seed"] = int(sampling.seed)
        return options

    def _tokens(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[str]:
        import numpy as np
        import onnxruntime_genai as og

        adjust = _Adjust(sampling, self.vocab)
        params = og.GeneratorParams(self.model)
        params.set_search_options(**self._search_options(len(prompt_ids), sampling))
        generator = og.Generator(self.model, params)
        try:
            generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
            stream = self.tokenizer.create_stream()
            while not generator.is_done():
                if adjust.active:
                    generator.set_logits(adjust(generator.get_logits()))
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if token in self.stop_ids:
                    return
                adjust.seen(token)
                yield stream.decode(token)
        finally:
            del generator  # its KV cache goes now, not at the next collection

    def estimate_bytes(self, path: Path) -> int:
        """Twice the folder's files plus a KV cache of ``n_ctx`` tokens (float32 on CPU). The
        doubling is measured: Gemma 3 270M int4 (256 MB of files) took 348 MB resident for the
        model (weights prepacked for the int4 kernels) and 174 MB more for its tokenizer (a 33
        MB tokenizer.json of 262,144 tokens), 522 MB in all; this gives 616 MB at n_ctx 2048,
        whose KV cache is 72 MB."""
        folder = model_folder(path)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        try:
            meta = _genai_config(folder)
        except ConfigError:
            return size + size // 4
        decoder = meta.get("decoder") or {}
        layers = int(decoder.get("num_hidden_layers") or 0)
        heads = int(decoder.get("num_key_value_heads") or decoder.get("num_attention_heads") or 0)
        head = int(decoder.get("head_size") or 0)
        kv = layers * self.entry.n_ctx * heads * head * 2 * 4  # keys and values, float32 on CPU
        return 2 * size + kv + _OVERHEAD
