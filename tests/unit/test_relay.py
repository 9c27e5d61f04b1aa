"""What a relayed reply's readers do (turnout/providers/relay.py): usage read in each dialect's
own fields, whole frames relayed however the network splits them, errors raised (never relayed),
a stream that never ends reported."""

from __future__ import annotations

import orjson
import pytest

from turnout.errors import BackendError, BackendUnavailableError
from turnout.providers.relay import reply_usage, stream_reader

START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":'
    b'{"input_tokens":5,"cache_read_input_tokens":6,"output_tokens":0}}}\n\n'
)
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0}\n\n'
END = (
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":3}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def test_whole_reply_usage_in_each_dialect() -> None:
    counts = {"input_tokens": 4, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1}
    message = {"type": "message", "usage": {**counts, "output_tokens": 9}}
    assert reply_usage("messages", orjson.dumps(message), "b") == _usage(7, 9)
    response = {"object": "response", "usage": {"input_tokens": 3, "output_tokens": 2}}
    assert reply_usage("responses", orjson.dumps(response), "b") == _usage(3, 2)
    done = {"done": True, "prompt_eval_count": 11, "eval_count": 5}
    assert reply_usage("ollama/chat", orjson.dumps(done), "b") == _usage(11, 5)
    with pytest.raises(BackendError, match="no such thing"):
        reply_usage("ollama/chat", b'{"error": "no such thing"}', "b")


@pytest.mark.parametrize("size", [1, 7, 50, 10_000])
def test_an_sse_stream_goes_out_in_whole_events(size: int) -> None:
    raw = START + DELTA + END
    reader = stream_reader("messages", "b")
    out, usages = b"", []
    for i in range(0, len(raw), size):
        whole, usage = reader.feed(raw[i : i + size])
        assert whole.endswith(b"\n\n") or not whole
        out += whole
        usages += [usage] if usage else []
    assert out == raw and reader.done
    assert usages[0] in (_usage(11, 0), _usage(11, 3)) and usages[-1] == _usage(11, 3)
    assert reader.close() == (b"", None)


def test_crlf_events_and_a_last_event_without_its_blank_line() -> None:
    raw = (START + END).replace(b"\n", b"\r\n")
    reader = stream_reader("messages", "b")
    whole, _ = reader.feed(raw[:-2])  # the last blank line never comes
    assert whole == raw[: raw.rindex(b"event: message_stop")] and not reader.done
    tail, _ = reader.close()
    assert tail.startswith(b"event: message_stop") and reader.done


def test_error_frames_are_raised_not_relayed() -> None:
    reader = stream_reader("messages", "b")
    reader.feed(START)
    error = (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"boom"}}\n\n'
    )
    with pytest.raises(BackendError, match="boom"):
        reader.feed(error)
    lines = stream_reader("ollama/chat", "b")
    assert lines.feed(b'{"message":{"content":"a"},"done":false}\n')[1] is None
    with pytest.raises(BackendError, match="model crashed"):
        lines.feed(b'{"error":"model crashed"}\n')


def test_ollama_lines_usage_from_the_done_line_and_a_cut_stream() -> None:
    reader = stream_reader("ollama/generate", "b")
    part = b'{"response":"a","done":false}\n'
    done = b'{"response":"","done":true,"prompt_eval_count":4,"eval_count":2}\n'
    assert reader.feed(part[:10]) == (b"", None)
    assert reader.feed(part[10:] + done[:5]) == (part, None)
    assert reader.feed(done[5:]) == (done, _usage(4, 2)) and reader.done
    cut = stream_reader("ollama/chat", "b")
    cut.feed(part)
    with pytest.raises(BackendUnavailableError):
        cut.close()


@pytest.mark.parametrize("end", ["response.completed", "response.incomplete"])
def test_a_responses_stream_ends_completed_or_incomplete(end: str) -> None:
    """Cut at ``max_output_tokens``, OpenAI's stream ends in ``response.incomplete``, with the
    usage: the stream is over there too (not reported as cut short)."""
    created = b'event: response.created\ndata: {"type":"response.created","response":{}}\n\n'
    last = {"type": end, "response": {"usage": {"input_tokens": 4, "output_tokens": 2}}}
    final = f"event: {end}\ndata: ".encode() + orjson.dumps(last) + b"\n\n"
    reader = stream_reader("responses", "b")
    assert reader.feed(created) == (created, None) and not reader.done
    assert reader.feed(final) == (final, _usage(4, 2)) and reader.done
    assert reader.close() == (b"", None)
