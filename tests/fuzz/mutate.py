"""Hostile but structured input: mutations of valid input, and the ways bytes arrive.

A case is a valid input (drawn from a corpus) and a short list of edits: cut it short,
flip a byte, delete or duplicate a slice, insert a hostile token, or insert a token
repeated up to a megabyte. Hypothesis shrinks a failure to the fewest, smallest edits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

# Bytes that have a meaning to one parser or another, or that no text should carry.
HOSTILE = [
    b"\x00", b"\r", b"\n", b"\r\n", b"\n\r", b" ", b"\t", b"\x0b", b"\x1b[2J", b"\x7f",
    b"\xff", b"\xff\xff", b"\xff\xf4\xff\xf2", b"\xff\xfb", b"\xff\xfb\x18", b"\xff\xfd\x01",
    b"\xff\xfa\x18\x01\xff\xf0", b"\xff\r", b"\xff\n", b"\xff\xfb\n",  # Telnet (RFC 854)
    b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
    b"\xc2\x85", b"\xe2\x80\xa8", b"\xef\xbb\xbf", b"\xd9\xa3", b"\xef\xbc\x91",  # bad/odd UTF-8
    b"-", b"+", b",", b"|", b":", b"::", b".", b"/", b"%", b"#", b";", b"[", b"]", b"(", b")",
    b"0", b"00", b"-1", b"256", b"65536", b"4294967296", b"9" * 24, b"0x1F",
]  # fmt: skip
# How often an inserted token is repeated: around every limit that matters, up to 1 MiB.
REPEATS = [2, 3, 107, 108, 255, 4095, 4096, 4097, 8193, 65536, 1 << 20]
BIG = 8193


@dataclass(frozen=True, slots=True)
class Edit:
    kind: str  # truncate, flip, delete, duplicate, insert
    at: int  # position, as a fraction of the input's length in 1/65536
    size: int = 1  # bytes to delete or duplicate; the xor for a flip; repeats for an insert
    token: bytes = b""


def _place(at: int, length: int) -> int:
    return min(at * (length + 1) >> 16, length)


def apply(data: bytes, edits: Sequence[Edit]) -> bytes:
    """``data`` with the edits applied in order."""
    for e in edits:
        i = _place(e.at, len(data))
        if e.kind == "truncate":
            data = data[:i]
        elif e.kind == "flip":
            if i < len(data):
                data = data[:i] + bytes([data[i] ^ (e.size & 0xFF or 1)]) + data[i + 1 :]
        elif e.kind == "delete":
            data = data[:i] + data[i + e.size :]
        elif e.kind == "duplicate":
            data = data[:i] + data[i : i + e.size] * 2 + data[i + e.size :]
        else:
            data = data[:i] + e.token * e.size + data[i:]
    return data


positions = st.integers(0, 1 << 16)


def edits(
    tokens: Sequence[bytes] = HOSTILE, repeats: Sequence[int] = REPEATS, max_size: int = 4
) -> st.SearchStrategy[list[Edit]]:
    """A few edits; inserted tokens are hostile ones or arbitrary short byte strings.

    Repeats past ``BIG`` use tokens without a line end: a megabyte of LFs is a million
    lines, a million events to check for one case."""
    token = st.sampled_from(tokens) | st.binary(min_size=1, max_size=6)
    one_line = [t for t in tokens if b"\n" not in t and b"\r" not in t] or [b"A"]
    big_token = st.sampled_from(one_line) | st.binary(min_size=1, max_size=6).filter(
        lambda t: b"\n" not in t
    )
    small = [r for r in repeats if r <= BIG]
    big = [r for r in repeats if r > BIG]
    edit = st.one_of(
        st.builds(Edit, st.just("truncate"), positions),
        st.builds(Edit, st.just("flip"), positions, st.integers(1, 255)),
        st.builds(Edit, st.just("delete"), positions, st.integers(1, 40)),
        st.builds(Edit, st.just("duplicate"), positions, st.integers(1, 200)),
        st.builds(Edit, st.just("insert"), positions, st.just(1), token),
        st.builds(Edit, st.just("insert"), positions, st.sampled_from(small or [2]), token),
        st.builds(Edit, st.just("insert"), positions, st.sampled_from(big or [2]), big_token),
    )
    return st.lists(edit, max_size=max_size)


# How bytes arrive: all at once, one at a time, or in chunks of the drawn sizes (cycled).
arrivals = st.one_of(
    st.just(("whole", ())),
    st.just(("bytewise", ())),
    st.tuples(st.just("chunks"), st.lists(st.integers(1, 70_000), min_size=1, max_size=6)),
)
# Bytewise feeding of a megabyte is a million calls: past this, only the ends go bytewise.
BYTEWISE_LIMIT = 8192


def pieces(data: bytes, how: tuple[str, Sequence[int]]) -> Iterator[bytes]:
    """``data`` cut as ``how`` says; joined, the pieces are ``data`` again."""
    mode, sizes = how
    if mode == "whole":
        yield data
        return
    if mode == "bytewise":
        edge = BYTEWISE_LIMIT // 2
        if len(data) <= BYTEWISE_LIMIT:
            yield from (data[i : i + 1] for i in range(len(data)))
            return
        yield from (data[i : i + 1] for i in range(edge))
        for start in range(edge, len(data) - edge, 65536):
            yield data[start : min(start + 65536, len(data) - edge)]
        yield from (data[i : i + 1] for i in range(len(data) - edge, len(data)))
        return
    start, turn = 0, 0
    while start < len(data):
        size = sizes[turn % len(sizes)]
        yield data[start : start + size]
        start += size
        turn += 1
