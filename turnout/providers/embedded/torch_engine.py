"""transformers on PyTorch: safetensors models on the CPU, CUDA or Apple's MPS.

``device`` (auto: CUDA when available, then MPS, then the CPU) and ``dtype`` (auto: bfloat16 on a
GPU that has it, else float16; the rules below on the CPU) come from the model entry or the
provider; ``load_in_8bit`` / ``load_in_4bit`` quantize the weights through bitsandbytes. On an
accelerator (or with ``max_batch`` above 1) concurrent requests are generated together by a
`Batcher` (static KV cache, CUDA graphs: `turnout.providers.embedded.torch_batch`); on the CPU
by default one request at a time, as follows.

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

import asyncio
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import tempfile
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from ...errors import BackendError, InvalidRequestError
from ..base import JSON, Call, Chunk
from .llama_engine import LoadCancelled
from .scheduler import Need
from .settings import EmbeddedModel
from .thread_engine import Sampling, ThreadEngine, chat_turns, require_packages
from .token_text import Chunks, StopScanner

__all__ = ["PACKAGES", "TransformersEngine", "resolve_device"]

_MB = 1024 * 1024
#: what this engine imports, and the pip extra that installs them
PACKAGES = ("torch", "transformers")
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: requests generated together on an accelerator when ``max_batch`` is unset
GPU_BATCH = 64
_DONE = object()


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


def resolve_device(asked: str, name: str) -> str:
    """The torch device of ``asked`` (auto: CUDA, then MPS, then the CPU); an error naming the
    model and the key when the device asked for is not there."""
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if asked == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if asked.startswith("cuda"):
        count = torch.cuda.device_count() if cuda else 0
        index = int(asked.partition(":")[2] or 0)
        if index >= count:
            seen = f"{count} CUDA device(s)" if cuda else "no CUDA device"
            raise BackendError(
                f"model '{name}': device {asked!r} is not available: torch "
                f"{torch.__version__} sees {seen} (set device: auto or cpu)"
            )
    if asked == "mps" and not mps:
        raise BackendError(f"model '{name}': device 'mps' is not available here")
    return asked


def _device_dtype(device: str, asked: str, stored: str | None) -> str:
    """``dtype: auto`` on an accelerator: bfloat16 where the GPU computes it, else float16;
    the stored type when it is one of these already. An explicit dtype wins."""
    import torch

    if asked != "auto":
        return asked
    if device == "cpu":
        return _compute_dtype(stored)
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    if stored == "float16" or not bf16:
        return "float16"
    return "bfloat16"


def _quantization(entry: EmbeddedModel) -> Any:
    """transformers' BitsAndBytesConfig for ``load_in_8bit`` / ``load_in_4bit``, or None; an
    error naming the key when bitsandbytes is not installed."""
    key = "load_in_8bit" if entry.load_in_8bit else "load_in_4bit" if entry.load_in_4bit else None
    if key is None:
        return None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackendError(
            f"model '{entry.name}': {key} needs the bitsandbytes package, which is not "
            f"installed: pip install bitsandbytes (or remove {key})"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**{key: True})  # type: ignore[no-untyped-call]


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
        self.device = "cpu"
        self.batcher: Any = None  # a Batcher when requests are generated together

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

    def placement(self, path: Path) -> int | Need:
        """Host bytes on the CPU (and on Apple's unified memory); on CUDA a `Need` of GPU
        memory (`device_bytes`) on the device asked for, or any GPU for ``auto``/``cuda``."""
        asked = self.entry.device or "auto"
        if asked == "cpu" or importlib.util.find_spec("torch") is None:
            return self.estimate_bytes(path)
        device = resolve_device(asked, self.entry.name)
        if not device.startswith("cuda"):
            return self.estimate_bytes(path)
        where = None if asked in ("auto", "cuda") else device
        return Need(host=256 * _MB, device=self.device_bytes(path), where=where)

    def device_bytes(self, path: Path) -> int:
        """GPU memory of the model: weights at their computed type (a byte a weight in 8-bit,
        half in 4-bit), the static KV cache of ``max_batch`` rows of ``n_ctx`` positions (a
        sliding-window layer keeps its window), the batch's logits and bias rows (three float
        rows of the vocabulary per slot), and 1,152 MiB for CUDA's context, the compiled
        graph's memory pool and the allocator's slack. Gemma 3 270M in bf16 with 64 slots of 512
        positions on the H200: nvidia-smi showed the gateway at 2,354 and 2,410 MiB after 64
        concurrent streams (two runs); this says 2,431 MiB.
        """
        folder = self.folder_of(path)
        cfg = _config(folder)
        files = [path] if path.is_file() else sorted(folder.glob("*.safetensors"))
        on_disk = sum(p.stat().st_size for p in files if p.is_file())
        stored = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
        asked = self.entry.dtype or "auto"
        width = _BYTES.get(asked, 2)  # auto on a GPU: bfloat16 or float16
        params = on_disk // _BYTES.get(stored, 4)
        weights = params * width
        if self.entry.load_in_8bit or self.entry.load_in_4bit:
            weights = params if self.entry.load_in_8bit else params // 2
        batch = self.entry.max_batch or GPU_BATCH
        layers = int(cfg.get("num_hidden_layers") or 0)
        heads = int(cfg.get("num_key_value_heads") or cfg.get("num_attention_heads") or 0)
        head_dim = int(cfg.get("head_dim") or 0) or int(cfg.get("hidden_size") or 0) // max(
            int(cfg.get("num_attention_heads") or 1), 1
        )
        window = cfg.get("sliding_window")
        types = cfg.get("layer_types") or []
        positions = sum(
            min(self.entry.n_ctx, int(window))
            if window and (t == "sliding_attention" or (not types and window))
            else self.entry.n_ctx
            for t in (types[:layers] if types else ["full_attention"] * layers)
        )
        kv = positions * heads * head_dim * 2 * width * batch
        vocab = int(cfg.get("vocab_size") or 0)
        return int(weights + kv + 3 * batch * vocab * 4 + 1152 * _MB)

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
        self.device = self.placed or resolve_device(self.entry.device or "auto", self.entry.name)
        quantization = _quantization(self.entry)
        step(0.1)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        step(0.3)
        config = AutoConfig.from_pretrained(folder)
        stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        stored_name = str(stored).removeprefix("torch.") if stored else None
        self.dtype = _device_dtype(self.device, self.entry.dtype or "auto", stored_name)
        batch = self.entry.max_batch or (1 if self.device == "cpu" else GPU_BATCH)
        options: dict[str, Any] = {"dtype": getattr(torch, self.dtype)}
        if batch > 1:
            options["attn_implementation"] = "sdpa"  # the batch's boolean per-row masks
        if quantization is not None:
            options["quantization_config"] = quantization
        if self.device != "cpu":
            options["device_map"] = {"": self.device}
        with _weights_folder(folder, path) as weights:
            model = AutoModelForCausalLM.from_pretrained(weights, **options)
        self.model = model.eval()  # type: ignore[no-untyped-call]
        step(0.8)
        archs = getattr(config, "architectures", None) or [getattr(config, "model_type", "")]
        self.architecture = str(archs[0])
        self._eos = _eos_ids(model, self.tokenizer)
        self._sample_default = bool(getattr(model.generation_config, "do_sample", False))
        if batch == 1:
            step(0.95)
            _warm_up(model, torch)
            return
        from .torch_batch import Batcher

        graphs = self.entry.cuda_graphs and self.device.startswith("cuda") and quantization is None
        self.batcher = Batcher(
            model, slots=batch, n_ctx=self.entry.n_ctx, device=torch.device(self.device),
            graphs=graphs, eos=self._eos, sample_default=self._sample_default,
            name=self.entry.name,
        )  # fmt: skip
        self.batcher.after_step = _deliver
        step(0.85)
        self.batcher.start()  # warms up in its own thread: captures the CUDA graph there
        while not self.batcher.ready.wait(0.1):
            step(0.85)
        if self.batcher.error is not None:
            raise self.batcher.error

    def _unload_blocking(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.model = self.tokenizer = self.batcher = None
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()  # hand the freed device memory back for the next model
        with contextlib.suppress(OSError, AttributeError):  # hand freed pages back to the system
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def describe(self) -> JSON:
        b = self.batcher
        if b is None:
            return {"device": self.device}
        batch = {"slots": b.slots, "busy": b.busy(), "mode": b.mode, "steps": b.steps,
                 "warm_up_seconds": round(b.warm_up_seconds, 2)}  # fmt: skip
        return {"device": self.device, "batch": batch}

    # Batched generation (on an accelerator, or with max_batch above 1).

    async def stream(self, call: Call) -> AsyncGenerator[Chunk, None]:
        if self.batcher is None:
            async for chunk in super().stream(call):
                yield chunk
            return
        sampling, stops = self._plan(call)
        ids, template_stops = await asyncio.to_thread(self._prompt, call)
        room = self.entry.n_ctx - len(ids)
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens, more than model '{call.model}' holds "
                f"(n_ctx {self.entry.n_ctx})",
                param="messages" if call.kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        if sampling.logit_bias:
            sampling.check_vocabulary(self.batcher.vocab)
        out = _BatchedStream(call, ids, [*stops, *template_stops], self.tokenizer)
        job = out.job(min(sampling.max_tokens, room), sampling)
        self.batcher.submit(job)
        try:
            while True:
                for item in await out.queue.get():
                    if item is _DONE:
                        return
                    if isinstance(item, BaseException):
                        raise self._map_error(item)
                    yield Chunk(item)
        finally:
            job.cancelled.set()  # the batcher frees its slot at the next step

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


class _BatchedStream:
    """One request's side of the batch: token ids in (in the batcher's thread), OpenAI chunks
    out, handed to the request's event loop in lists once per decoding step (`_deliver`)."""

    def __init__(self, call: Call, ids: list[int], stops: list[str], tokenizer: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.chunks, self.scanner = Chunks(call), StopScanner(stops)
        self.decode = _Detokenizer(tokenizer, ids[-4:])
        self.prompt_ids, self.prompt_tokens, self.count = ids, len(ids), 0
        self.pending: list[Any] = [self.chunks.role()] if self.chunks.chat else []

    def job(self, limit: int, sampling: Sampling) -> Any:
        from .torch_batch import Job

        return Job(
            prompt=self.prompt_ids, limit=limit, emit=self.emit, end=self.end, fail=self.fail,
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            seed=sampling.seed, bias=sampling.logit_bias, presence=sampling.presence_penalty,
            frequency=sampling.frequency_penalty, owner=self,
        )  # fmt: skip

    def emit(self, token: int) -> bool:
        self.count += 1
        text = self.scanner.feed(self.decode.add(token))
        if text:
            self.pending.append(self.chunks.text(text))
        if self.scanner.stopped:
            self._finish("stop")
            return False
        return True

    def end(self, reason: str) -> None:
        rest = self.scanner.flush()
        if rest:
            self.pending.append(self.chunks.text(rest))
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        usage = self.chunks.usage(self.prompt_tokens, self.count)
        self.pending += [self.chunks.finish(reason), usage, _DONE]

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, [exc, _DONE])

    def take(self) -> list[Any]:
        items, self.pending = self.pending, []
        return items


def _deliver(jobs: list[Any]) -> None:
    """After each step: every request's new chunks, one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, list[Any]]]] = {}
    for job in jobs:
        stream = job.owner
        if stream is not None and stream.pending:
            by_loop.setdefault(stream.loop, []).append((stream.queue, stream.take()))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
            loop.call_soon_threadsafe(_put_all, batch)


def _put_all(batch: list[tuple[Any, list[Any]]]) -> None:
    for queue, items in batch:
        queue.put_nowait(items)
