"""The SSE decoder: every runtime's framing, fed whole and split at every byte."""

from __future__ import annotations

import pytest

from turnout.wire.sse import DONE, SSEDecoder, SSEEvent, comment, encode_data, encode_json


def decode(*pieces: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    return events


def splits(stream: bytes) -> list[list[SSEEvent]]:
    """Decode ``stream`` cut in two at every position and in single bytes."""
    results = [decode(stream[:i], stream[i:]) for i in range(len(stream) + 1)]
    results.append(decode(*(stream[i : i + 1] for i in range(len(stream)))))
    return results


LF = b'data: {"a":1}\n\ndata: {"a":2}\n\ndata: [DONE]\n\n'
EXPECTED = [SSEEvent(b'{"a":1}'), SSEEvent(b'{"a":2}'), SSEEvent(b"[DONE]")]


def test_lf() -> None:
    assert decode(LF) == EXPECTED


def test_crlf() -> None:
    assert decode(LF.replace(b"\n", b"\r\n")) == EXPECTED


def test_mixed_line_endings() -> None:
    assert decode(b'data: {"a":1}\r\n\ndata: {"a":2}\n\r\ndata: [DONE]\r\n\r\n') == EXPECTED


def test_comments_and_pings_are_skipped() -> None:
    stream = b': ping\n\n:keep-alive\ndata: {"a":1}\n: in the middle\n\n: ping - 2024\r\n\r\n'
    assert decode(stream) == [SSEEvent(b'{"a":1}')]


def test_event_names_are_kept_per_event() -> None:
    stream = b'event: message\ndata: {"token":"a"}\n\ndata: b\n\nevent: error\ndata: {"e":1}\n\n'
    assert decode(stream) == [
        SSEEvent(b'{"token":"a"}', "message"),
        SSEEvent(b"b", None),
        SSEEvent(b'{"e":1}', "error"),
    ]


def test_event_without_data_is_not_an_event() -> None:
    assert decode(b"event: ping\n\ndata: x\n\n") == [SSEEvent(b"x", None)]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: line one\ndata: line two\ndata:\ndata:  indented\n\n") == [
        SSEEvent(b"line one\nline two\n\n indented")
    ]


def test_space_after_colon_is_optional() -> None:
    assert decode(b"data:{}\n\ndata: {}\n\n") == [SSEEvent(b"{}"), SSEEvent(b"{}")]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"id: 7\nretry: 100\ndata: x\nfoo\n\n") == [SSEEvent(b"x")]


def test_eof_without_trailing_blank_line_ends_the_event() -> None:
    # KoboldCpp writes the last event without its blank line
    assert decode(b'data: {"a":1}\n\ndata: [DONE]') == [SSEEvent(b'{"a":1}'), SSEEvent(b"[DONE]")]
    assert decode(b'data: {"a":1}\n\ndata: [DONE]\n') == [
        SSEEvent(b'{"a":1}'),
        SSEEvent(b"[DONE]"),
    ]
    assert decode(b"data: [DONE]\r") == [SSEEvent(b"[DONE]")]


def test_empty_input() -> None:
    assert decode() == []
    assert decode(b"") == []
    assert decode(b"\n\n\r\n") == []


def test_feed_returns_only_complete_events() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: {") == []
    assert decoder.feed(b'"a":1}\n') == []
    assert decoder.feed(b"\n") == [SSEEvent(b'{"a":1}')]
    assert decoder.feed(b"data: x\n\ndata: y") == [SSEEvent(b"x")]
    assert decoder.close() == [SSEEvent(b"y")]
    assert decoder.close() == []


def test_utf8_split_inside_a_character() -> None:
    text = 'data: {"t":"héllo ✓ 世界"}\n\n'.encode()
    for events in splits(text):
        assert events == [SSEEvent('{"t":"héllo ✓ 世界"}'.encode())]


@pytest.mark.parametrize(
    "stream",
    [
        LF,
        LF.replace(b"\n", b"\r\n"),
        b": ping\n\n" + LF.replace(b"\n\n", b"\n: ping\n\n"),
        LF.removesuffix(b"\n\n"),
        LF.replace(b"\n", b"\r\n").removesuffix(b"\r\n\r\n"),
    ],
    ids=["lf", "crlf", "pings", "lf-no-final-blank", "crlf-no-final-blank"],
)
def test_every_split_point(stream: bytes) -> None:
    for events in splits(stream):
        assert events == EXPECTED


def test_every_split_point_with_names_and_multiline() -> None:
    stream = b"event: delta\r\ndata: a\r\ndata: b\r\n\r\n:c\r\nevent: end\r\ndata: [DONE]"
    expected = [SSEEvent(b"a\nb", "delta"), SSEEvent(b"[DONE]", "end")]
    for events in splits(stream):
        assert events == expected


def test_encoders() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_json({"a": [1, "é"]}) == 'data: {"a":[1,"é"]}\n\n'.encode()
    assert comment() == b": keep-alive\n\n"
    assert comment("ping") == b": ping\n\n"
    assert DONE == b"data: [DONE]\n\n"
    assert decode(encode_json({"x": 1}) + comment() + DONE) == [
        SSEEvent(b'{"x":1}'),
        SSEEvent(b"[DONE]"),
    ]
