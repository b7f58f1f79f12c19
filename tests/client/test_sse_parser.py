"""The client's SSE parser: the standard's line rules, and properties over arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasma.client._sse import SSEFrame, SSEParser, StreamTooLong


def parse(*chunks: bytes) -> tuple[list[SSEFrame], SSEParser]:
    parser = SSEParser()
    frames = [frame for chunk in chunks for frame in parser.feed(chunk)]
    return frames, parser


def test_plasma_stream_parses_into_frames_with_ids_and_retry() -> None:
    frames, parser = parse(
        b'retry: 2000\n\nid: e-1\ndata: {"a":1}\n\n:heartbeat\n\n'
        b'event: gap\nid: e-9\ndata: {"g":1}\n\n'
    )
    assert frames == [SSEFrame("", '{"a":1}', "e-1"), SSEFrame("gap", '{"g":1}', "e-9")]
    assert parser.retry == 2000


def test_every_line_end_counts_and_a_cr_lf_split_across_chunks_is_one() -> None:
    frames, _ = parse(b"data: a\r", b"", b"\ndata: b\rdata: c\n\r\n")
    assert frames == [SSEFrame("", "a\nb\nc", "")]


def test_bom_is_dropped_only_at_the_start() -> None:
    frames, _ = parse(b"\xef\xbb", b"\xbfdata: x\n\n\xef\xbb\xbfdata: y\n\n")
    assert [f.data for f in frames] == ["x"]  # the second BOM makes an unknown field name


def test_id_persists_and_an_id_with_nul_is_ignored() -> None:
    frames, parser = parse(b"id: 1\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n")
    assert [f.id for f in frames] == ["1", "1", "1", ""]
    assert parser.last_id == ""


def test_retry_counts_only_when_all_digits() -> None:
    _, parser = parse(b"retry: 10\n\nretry: 5s\n\nretry: -1\n\nretry:\n\n")
    assert parser.retry == 10


def test_frame_without_data_is_not_dispatched_and_empty_data_is() -> None:
    frames, _ = parse(b"event: x\n\ndata\n\n")
    assert frames == [SSEFrame("", "", "")]


def test_utf8_split_across_chunks_decodes_whole() -> None:
    raw = "data: é€😀\n\n".encode()
    frames, _ = parse(raw[:8], raw[8:9], raw[9:])
    assert frames[0].data == "é€😀"


def test_a_line_longer_than_the_limit_is_refused() -> None:
    parser = SSEParser(max_line=100)
    with pytest.raises(StreamTooLong):
        parser.feed(b"data: " + b"x" * 200)


# --- properties -----------------------------------------------------------------------------

field_text = st.text(
    st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=20
)
frames_st = st.lists(
    st.tuples(
        field_text.filter(lambda s: not s.startswith(" ")),  # event
        st.lists(field_text, min_size=1, max_size=3),  # data lines
        field_text,  # id
    ),
    max_size=6,
)


def _splits(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(c % (len(raw) + 1) for c in cuts)  # repeated points make empty chunks
    out, last = [], 0
    for p in points:
        out.append(raw[last:p])
        last = p
    out.append(raw[last:])
    return out


@given(frames_st, st.sampled_from(["\n", "\r", "\r\n"]), st.lists(st.integers(0, 10_000)))
def test_encoded_frames_parse_back_in_any_chunking(
    frames: list[tuple[str, list[str], str]], newline: str, cuts: list[int]
) -> None:
    text = ""
    for event, data, event_id in frames:
        text += f"event: {event}{newline}" if event else ""
        text += "".join(f"data: {line}{newline}" for line in data)
        text += f"id: {event_id}{newline}{newline}"
    raw = text.encode()
    got, _ = parse(*_splits(raw, cuts))
    assert got == [SSEFrame(e, "\n".join(d), i) for e, d, i in frames]


@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=8))
def test_any_bytes_parse_the_same_in_any_chunking(raw: bytes, cuts: list[int]) -> None:
    whole, whole_parser = parse(raw)
    split, split_parser = parse(*_splits(raw, cuts))
    assert split == whole
    assert (split_parser.retry, split_parser.last_id) == (whole_parser.retry, whole_parser.last_id)
