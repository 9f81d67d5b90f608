"""RadixTrie and PrefixTable: unit cases, then both against a brute-force reference."""

from __future__ import annotations

import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.rules.trie import (
    CHUNK,
    PrefixTable,
    RadixTrie,
    compile_prefixes,
    sorted_ints,
)

V4, V6 = 32, 128


def net(prefix: int, length: int, bits: int = V4) -> tuple[int, int]:
    """``prefix`` cut to its first ``length`` bits."""
    host = bits - length
    return prefix >> host << host, length


def ip4(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


# -- unit cases ----------------------------------------------------------------------------
def test_width_must_be_ipv4_or_ipv6() -> None:
    with pytest.raises(ValueError, match="32 or 128"):
        RadixTrie[str](64)


@pytest.mark.parametrize(
    ("prefix", "length", "message"),
    [
        (ip4("10.0.0.1"), 8, "host bits"),
        (0, 33, "outside 0..32"),
        (0, -1, "outside 0..32"),
        (1 << 32, 32, "does not fit"),
        (-1, 32, "does not fit"),
    ],
)
def test_add_refuses_bad_prefixes(prefix: int, length: int, message: str) -> None:
    trie = RadixTrie[str](V4)
    with pytest.raises(ValueError, match=message):
        trie.add(prefix, length, "x")
    assert len(trie) == 0


def test_walks_refuse_addresses_out_of_range() -> None:
    trie = RadixTrie[str](V4)
    for bad in (-1, 1 << 32):
        with pytest.raises(ValueError, match="does not fit"):
            trie.matches(bad)
        with pytest.raises(ValueError, match="does not fit"):
            trie.longest_match(bad)


def test_empty_trie_matches_nothing() -> None:
    trie = RadixTrie[str](V6)
    table = trie.compile()
    for address in (0, 1, (1 << 128) - 1):
        assert trie.matches(address) == []
        assert trie.longest_match(address) is None
        assert table.lookup(address) == ()
    assert len(trie) == 0
    assert len(table) == 1


def test_most_specific_first_and_values_in_order_added() -> None:
    trie = RadixTrie[str](V4)
    trie.add(*net(ip4("10.0.0.0"), 8), "ten")
    trie.add(*net(ip4("10.66.0.0"), 16), "lab")
    trie.add(*net(ip4("10.0.0.0"), 8), "ten again")
    trie.add(*net(ip4("192.0.2.7"), 32), "host")
    table = trie.compile()
    inside = ip4("10.66.1.2")
    expected = [(16, ("lab",)), (8, ("ten", "ten again"))]
    assert trie.matches(inside) == expected
    assert table.lookup(inside) == tuple(expected)
    assert trie.longest_match(inside) == (16, ("lab",))
    assert trie.longest_match(ip4("10.1.1.1")) == (8, ("ten", "ten again"))
    assert trie.longest_match(ip4("192.0.2.7")) == (32, ("host",))
    assert trie.longest_match(ip4("192.0.2.8")) is None
    assert table.lookup(ip4("192.0.2.8")) == ()
    assert len(trie) == 3


def test_default_route_and_host_routes() -> None:
    trie = RadixTrie[str](V4)
    trie.add(0, 0, "any")
    trie.add((1 << 32) - 1, 32, "broadcast")
    trie.add(0, 32, "zero")
    table = trie.compile()
    assert table.lookup(0) == ((32, ("zero",)), (0, ("any",)))
    assert table.lookup(1) == ((0, ("any",)),)
    assert table.lookup((1 << 32) - 1) == ((32, ("broadcast",)), (0, ("any",)))
    assert trie.matches((1 << 32) - 2) == [(0, ("any",))]


def test_intervals_either_side_of_a_nested_prefix() -> None:
    trie = RadixTrie[str](V4)
    trie.add(*net(ip4("10.0.0.0"), 8), "ten")
    trie.add(*net(ip4("10.66.0.0"), 16), "lab")
    table = trie.compile()
    before, after = table.interval(ip4("10.1.0.0")), table.interval(ip4("10.200.0.0"))
    assert table.chain(before) == table.chain(after) == ((8, ("ten",)),)
    assert before != after
    assert len(table) == 5  # below 10/8, 10/8, 10.66/16, 10/8 again, above 10/8
    assert [table.covers(ip4(x)) for x in ("9.255.255.255", "10.66.0.1", "11.0.0.0")] == [
        False,
        True,
        False,
    ]


def test_ipv4_bounds_are_a_compact_array() -> None:
    trie = RadixTrie[str](V4)
    trie.add(*net(ip4("255.255.255.0"), 24), "top")  # ends at the end of the space
    trie.add(*net(ip4("10.0.0.0"), 8), "ten")
    table = trie.compile()
    assert isinstance(table.bounds, array)
    assert list(table.bounds) == [ip4("10.0.0.0"), ip4("11.0.0.0"), ip4("255.255.255.0")]
    assert table.lookup((1 << 32) - 1) == ((24, ("top",)),)


def test_compile_is_a_snapshot() -> None:
    trie = RadixTrie[str](V4)
    trie.add(*net(ip4("10.0.0.0"), 8), "ten")
    table = trie.compile()
    trie.add(*net(ip4("10.0.0.0"), 8), "later")
    trie.add(*net(ip4("10.1.0.0"), 16), "later")
    assert table.lookup(ip4("10.1.2.3")) == ((8, ("ten",)),)
    assert trie.compile().lookup(ip4("10.1.2.3")) == ((16, ("later",)), (8, ("ten", "later")))


def test_adds_between_walks_are_seen() -> None:
    trie = RadixTrie[str](V4)
    trie.add(*net(ip4("10.66.0.0"), 16), "lab")
    assert trie.longest_match(ip4("10.66.0.1")) == (16, ("lab",))
    trie.add(*net(ip4("10.0.0.0"), 8), "ten")  # above an existing node
    trie.add(*net(ip4("10.64.0.0"), 16), "near")  # forks off beside it
    trie.add(*net(ip4("10.66.0.0"), 16), "lab again")  # onto a placed prefix
    trie.add(0, 0, "any")  # onto the root
    assert trie.matches(ip4("10.66.0.1")) == [
        (16, ("lab", "lab again")),
        (8, ("ten",)),
        (0, ("any",)),
    ]
    assert trie.matches(ip4("10.64.0.1")) == [(16, ("near",)), (8, ("ten",)), (0, ("any",))]


def test_every_length_of_one_ipv6_address_nests() -> None:
    address = (0x2001_0DB8 << 96) | 0xDEAD_BEEF
    trie = RadixTrie[int](V6)
    for length in range(V6 + 1):
        trie.add(*net(address, length, V6), length)
    expected = [(length, (length,)) for length in range(V6, -1, -1)]
    assert trie.matches(address) == expected
    assert trie.compile().lookup(address) == tuple(expected)
    assert len(trie) == V6 + 1


def test_table_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="one owner more"):
        PrefixTable[str]([1, 2], [-1], [], [], [], {})
    with pytest.raises(ValueError, match="a length, parent and value per prefix"):
        PrefixTable[str]([1], [-1, 0], [8], [], ["x"], {})


def test_compile_prefixes_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="a length and a value per prefix"):
        compile_prefixes(V4, [0, 1 << 24], [8], ["a", "b"])
    with pytest.raises(ValueError, match="32 or 128"):
        compile_prefixes(64, [], [], [])
    assert compile_prefixes(V6, [], [], []).lookup(0) == ()


def test_sorted_ints_sorts_across_chunks() -> None:
    rng = random.Random(6)
    for size in (0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 5):
        items = [rng.getrandbits(40) for _ in range(size)]
        assert sorted_ints(items) == sorted(items)
    clustered = [rng.getrandbits(8) << 100 | rng.getrandbits(20) for _ in range(3 * CHUNK)]
    clustered += [7] * CHUNK + [1 << 120]  # many equal, and far apart
    assert sorted_ints(clustered) == sorted(clustered)
    ordered = sorted(clustered)
    assert sorted_ints(ordered) == ordered and sorted_ints(ordered[::-1]) == ordered


# -- against a brute-force reference ---------------------------------------------------------
Entry = tuple[int, int]  # (prefix, length); its value is its index in the list


def reference(entries: list[Entry], address: int, bits: int) -> list[tuple[int, tuple[int, ...]]]:
    """Every entry containing ``address``, grouped by length, longest first."""
    found: dict[int, list[int]] = {}
    for index, (prefix, length) in enumerate(entries):
        if address >> (bits - length) == prefix >> (bits - length):
            found.setdefault(length, []).append(index)
    return [(length, tuple(found[length])) for length in sorted(found, reverse=True)]


@st.composite
def rule_sets(draw: st.DrawFn, bits: int) -> list[Entry]:
    """Prefixes cut from a few base addresses (so they nest and repeat), and some random."""
    top = (1 << bits) - 1
    bases = draw(st.lists(st.integers(0, top), min_size=1, max_size=3))
    addresses = st.sampled_from(bases) | st.integers(0, top)
    lengths = st.sampled_from([0, 1, bits - 1, bits]) | st.integers(0, bits)
    pairs = draw(st.lists(st.tuples(addresses, lengths), max_size=40))
    return [net(prefix, length, bits) for prefix, length in pairs]


def probes(entries: list[Entry], bits: int, extra: list[int]) -> set[int]:
    """Addresses at and around every entry's edges (start-1, start, end, end+1), and ``extra``."""
    top = (1 << bits) - 1
    found = {0, top, *extra}
    for prefix, length in entries:
        end = prefix + (1 << (bits - length)) - 1
        found.update(x for x in (prefix - 1, prefix, end, end + 1) if 0 <= x <= top)
    return found


def check(bits: int, entries: list[Entry], split: int, extra: list[int]) -> None:
    trie = RadixTrie[int](bits)
    split = min(split, len(entries))
    for index, (prefix, length) in enumerate(entries[:split]):
        trie.add(prefix, length, index)
    trie.matches(0)  # grow the nodes now, so the rest are placed into an existing trie
    for index, (prefix, length) in enumerate(entries[split:], split):
        trie.add(prefix, length, index)
    table = trie.compile()
    assert len(trie) == len(set(entries))
    # The table is minimal: a new interval exactly where the set of matching prefixes changes.
    edges = {x for p, n in entries for x in (p, p + (1 << (bits - n)))} - {0, 1 << bits}
    changes = [x for x in edges if reference(entries, x, bits) != reference(entries, x - 1, bits)]
    assert len(table) == 1 + len(changes)
    for address in probes(entries, bits, extra):
        expected = reference(entries, address, bits)
        assert trie.matches(address) == expected, address
        assert trie.longest_match(address) == (expected[0] if expected else None), address
        assert table.lookup(address) == tuple(expected), address
        assert table.covers(address) == bool(expected), address
        assert table.longest_match(address) == (expected[0] if expected else None), address
    # The same table from all the prefixes at once, in the order they were added.
    bulk = compile_prefixes(
        bits, [p for p, _ in entries], [n for _, n in entries], list(range(len(entries)))
    )
    assert list(bulk.bounds) == list(table.bounds)
    for address in probes(entries, bits, extra):
        assert bulk.lookup(address) == table.lookup(address), address


@settings(max_examples=300, deadline=None)
@given(
    rule_sets(V4),
    st.integers(0, 40),
    st.lists(st.integers(0, (1 << V4) - 1), max_size=10),
)
def test_ipv4_matches_reference(entries: list[Entry], split: int, extra: list[int]) -> None:
    check(V4, entries, split, extra)


@settings(max_examples=300, deadline=None)
@given(
    rule_sets(V6),
    st.integers(0, 40),
    st.lists(st.integers(0, (1 << V6) - 1), max_size=10),
)
def test_ipv6_matches_reference(entries: list[Entry], split: int, extra: list[int]) -> None:
    check(V6, entries, split, extra)
