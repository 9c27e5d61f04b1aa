"""Chat templates: how a chat becomes one prompt for runtimes that generate from text (the Kobold
dialect). A small set of named templates, chosen per model with ``chat_format`` in the
configuration; names follow llama-cpp-python's (``chatml``, ``llama-3``, ``gemma``, ``alpaca``,
``mistral``/``mistral-instruct``). Formats as each model family's own template writes them; BOS
tokens are left to the backend's tokenizer, which adds them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_TEMPLATE", "TEMPLATES", "Template"]


@dataclass(frozen=True, slots=True)
class Template:
    """How a chat becomes a prompt: each role's text goes between its ``turns`` markers, then
    ``generation`` opens the assistant's turn; ``stop`` ends it. Templates without a system role
    (``merge_system``) put system text at the head of the next user turn."""

    turns: Mapping[str, tuple[str, str]]
    generation: str
    stop: tuple[str, ...]
    merge_system: bool = False
    preamble: str = ""  # text before the first turn when the chat has no system message

    def render(self, messages: list[tuple[str, str]]) -> str:
        parts: list[str] = []
        pending: list[str] = []  # system text waiting for a user turn (merge_system)
        if self.preamble and not any(role == "system" for role, _ in messages):
            parts.append(self.preamble)
        for role, text in messages:
            if role == "system" and self.merge_system:
                pending.append(text)
                continue
            if role == "user" and pending:
                text = "\n\n".join([*pending, text])
                pending.clear()
            before, after = self.turns[role]
            parts.append(f"{before}{text}{after}")
        if pending:  # a system message with no user turn after it
            before, after = self.turns["user"]
            parts.append(f"{before}{chr(10).join(pending)}{after}")
        return "".join(parts) + self.generation


def _turn(open_: str, close: str, roles: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    return {role: (open_.format(role=role), close) for role in roles}


_ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)

#: the chat templates a Kobold model can be given (``chat_format``); BOS tokens are left to the
#: backend's tokenizer, which adds them itself
TEMPLATES: dict[str, Template] = {
    "chatml": Template(
        _turn("<|im_start|>{role}\n", "<|im_end|>\n", ("system", "user", "assistant")),
        "<|im_start|>assistant\n",
        ("<|im_end|>", "<|im_start|>"),
    ),
    "llama-3": Template(
        _turn(
            "<|start_header_id|>{role}<|end_header_id|>\n\n",
            "<|eot_id|>",
            ("system", "user", "assistant"),
        ),
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|eot_id|>", "<|start_header_id|>"),
    ),
    "gemma": Template(
        {
            "user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
            "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n"),
        },
        "<start_of_turn>model\n",
        ("<end_of_turn>", "<start_of_turn>"),
        merge_system=True,
    ),
    "alpaca": Template(
        {
            "system": ("", "\n\n"),
            "user": ("### Instruction:\n", "\n\n"),
            "assistant": ("### Response:\n", "\n\n"),
        },
        "### Response:\n",
        ("### Instruction:", "### Response:"),
        preamble=_ALPACA_PREAMBLE,
    ),
    "mistral": Template(
        {"user": ("[INST] ", " [/INST]"), "assistant": ("", "</s>")},
        "",
        ("[INST]", "</s>"),
        merge_system=True,
    ),
}
TEMPLATES["mistral-instruct"] = TEMPLATES["mistral"]  # llama-cpp-python's name for it
DEFAULT_TEMPLATE = "chatml"
