"""Longest-prefix match over integer addresses: a radix trie and its compiled lookup table.

``RadixTrie`` is a path-compressed binary (Patricia) trie: a node exists only where a
prefix was added or where two branches part, so a walk down never visits one node per
bit. ``RadixTrie.compile`` flattens the
prefixes into a ``PrefixTable``: the address space cut into sorted disjoint intervals,
each with the chain of prefixes covering it, so a lookup is one ``bisect_right`` on a
list of ints. Everything is iterative: 128-bit keys never approach the recursion limit.
"""

from __future__ import annotations

import gc
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeAlias, TypeVar

V = TypeVar("V")

#: Every stored prefix containing an address, most specific first, as (length, values).
Chain: TypeAlias = tuple[tuple[int, tuple[V, ...]], ...]

_ADDRESS_BITS = (32, 128)  # IPv4, IPv6
_LENGTH_BITS = 8  # a prefix and its length share one int key: prefix << 8 | length
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1


class _Node:
    """A prefix: the first ``length`` bits of ``prefix``; not ``stored`` on a branch point."""

    __slots__ = ("children", "length", "prefix", "stored")

    def __init__(self, prefix: int, length: int, stored: bool) -> None:
        self.prefix = prefix
        self.length = length
        self.stored = stored
        self.children: list[_Node | None] = [None, None]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while many long-lived, acyclic objects are made.

    Building 100,000 rules (loading a network list, compiling a table: several objects per
    prefix, none cyclic) sets off full collections that rescan the whole heap and double
    the time while finding nothing to free.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PrefixTable(Generic[V]):
    """A compiled, read-only ``RadixTrie``: sorted interval bounds and one chain per interval.

    Interval ``i`` runs from ``bounds[i - 1]`` (0 for the first) up to ``bounds[i]`` (the
    end of the address space for the last); the intervals covered by one prefix and
    nothing more specific share its chain tuple.
    """

    __slots__ = ("_bounds", "_chains")

    def __init__(self, bounds: list[int], chains: list[Chain[V]]) -> None:
        if len(chains) != len(bounds) + 1:
            raise ValueError("a prefix table needs one chain more than it has bounds")
        self._bounds = bounds
        self._chains = chains

    def lookup(self, address: int) -> Chain[V]:
        """Every prefix containing ``address`` (in range, not checked), most specific first."""
        return self._chains[bisect_right(self._bounds, address)]

    def __len__(self) -> int:
        """Number of intervals."""
        return len(self._chains)


class RadixTrie(Generic[V]):
    """Prefixes of ``bits``-bit integer addresses, each holding values in the order added.

    ``add`` only files the value under its prefix; the nodes are grown from the new
    prefixes on the next ``matches`` or ``longest_match``. ``compile`` sorts the prefixes
    and needs no nodes, so building a table for a large rule set never walks the trie.
    """

    __slots__ = ("_bits", "_first", "_more", "_root", "_unplaced")

    def __init__(self, bits: int) -> None:
        if bits not in _ADDRESS_BITS:
            raise ValueError(f"address width must be 32 or 128 bits, not {bits}")
        self._bits = bits
        # Keyed by prefix << _LENGTH_BITS | length. Most prefixes hold one value: keeping it
        # bare, not in a list, spares an object per prefix (and garbage-collector work).
        self._first: dict[int, V] = {}
        self._more: dict[int, list[V]] = {}  # values added after the first, where any were
        self._unplaced: list[int] = []  # keys not yet in the nodes
        self._root = _Node(0, 0, False)

    def __len__(self) -> int:
        """Number of distinct prefixes."""
        return len(self._first)

    def add(self, prefix: int, length: int, value: V) -> None:
        """Append ``value`` to the values at ``prefix/length``; host bits must be zero."""
        bits = self._bits
        if not 0 <= length <= bits:
            raise ValueError(f"prefix length {length} is outside 0..{bits}")
        if not 0 <= prefix < 1 << bits:
            raise ValueError(f"prefix {prefix:#x} does not fit in {bits} bits")
        if prefix & ((1 << (bits - length)) - 1):
            raise ValueError(f"prefix {prefix:#x}/{length} has host bits set")
        key = prefix << _LENGTH_BITS | length
        if key not in self._first:
            self._first[key] = value
            self._unplaced.append(key)
        elif key in self._more:
            self._more[key].append(value)
        else:
            self._more[key] = [value]

    def matches(self, address: int) -> list[tuple[int, tuple[V, ...]]]:
        """Every prefix containing ``address``, most specific first, as (length, values)."""
        bits = self._ready(address)
        found: list[tuple[int, tuple[V, ...]]] = []
        node: _Node | None = self._root
        while node is not None and not (address ^ node.prefix) >> (bits - node.length):
            if node.stored:
                found.append((node.length, self._values(node.prefix, node.length)))
            if node.length == bits:
                break
            node = node.children[(address >> (bits - 1 - node.length)) & 1]
        found.reverse()
        return found

    def longest_match(self, address: int) -> tuple[int, tuple[V, ...]] | None:
        """The most specific prefix containing ``address`` as (length, values), or None."""
        bits = self._ready(address)
        best: _Node | None = None
        node: _Node | None = self._root
        while node is not None and not (address ^ node.prefix) >> (bits - node.length):
            if node.stored:
                best = node
            if node.length == bits:
                break
            node = node.children[(address >> (bits - 1 - node.length)) & 1]
        return None if best is None else (best.length, self._values(best.prefix, best.length))

    def compile(self) -> PrefixTable[V]:
        """Flatten into a ``PrefixTable``; later ``add`` calls do not change it."""
        with gc_paused():
            return self._flatten()

    def _flatten(self) -> PrefixTable[V]:
        bits = self._bits
        end_of_space = 1 << bits
        empty: Chain[V] = ()
        # Interval i runs from starts[i] to starts[i + 1]. A prefix opens an interval at its
        # start; its end opens one with the enclosing prefix's chain. Sorted keys give the
        # prefixes by start, enclosing before enclosed; `ends` and `open_` hold the end and
        # chain of the prefixes enclosing the current one (after a sentinel), outermost first.
        starts = [0]
        chains = [empty]
        ends = [end_of_space + 1]
        open_ = [empty]

        def leave(upto: int) -> None:
            """Close the open prefixes that end at or before ``upto``."""
            while ends[-1] <= upto:
                end = ends.pop()
                open_.pop()
                if end == starts[-1]:  # an enclosed prefix ended here too: replace its interval
                    chains[-1] = open_[-1]
                else:
                    starts.append(end)
                    chains.append(open_[-1])

        first = self._first
        more = self._more
        for key in sorted(first):
            start = key >> _LENGTH_BITS
            if ends[-1] <= start:
                leave(start)
            length = key & _LENGTH_MASK
            values = (first[key], *more[key]) if more and key in more else (first[key],)
            chain = ((length, values), *open_[-1])
            if start == starts[-1]:  # the interval opened here is empty: replace it
                chains[-1] = chain
            else:
                starts.append(start)
                chains.append(chain)
            ends.append(start + (1 << (bits - length)))
            open_.append(chain)
        leave(end_of_space)
        if starts[-1] == end_of_space:  # opened by a prefix ending at the top: no such interval
            del starts[-1], chains[-1]
        del starts[0]
        return PrefixTable(starts, chains)

    def _values(self, prefix: int, length: int) -> tuple[V, ...]:
        key = prefix << _LENGTH_BITS | length
        return (self._first[key], *self._more.get(key, ()))

    def _ready(self, address: int) -> int:
        """Check ``address``; put the prefixes added since the last walk into the nodes."""
        bits = self._bits
        if not 0 <= address < 1 << bits:
            raise ValueError(f"address {address:#x} does not fit in {bits} bits")
        for key in self._unplaced:
            self._place(key >> _LENGTH_BITS, key & _LENGTH_MASK)
        self._unplaced.clear()
        return bits

    def _place(self, prefix: int, length: int) -> None:
        """Insert a new prefix into the nodes (path-compressed: no single-child chains)."""
        bits = self._bits
        node = self._root
        while True:
            if node.length == length:  # only the root: other prefixes are placed once
                node.stored = True
                return
            bit = (prefix >> (bits - 1 - node.length)) & 1
            child = node.children[bit]
            if child is None:
                node.children[bit] = _Node(prefix, length, True)
                return
            limit = min(child.length, length)
            differ = (child.prefix ^ prefix) >> (bits - limit)  # first `limit` bits, XORed
            if not differ and child.length <= length:
                node = child  # child's prefix contains the new one: go down
                continue
            if not differ:  # the new prefix contains child's: slot it in above the child
                new = _Node(prefix, length, True)
                new.children[(child.prefix >> (bits - 1 - length)) & 1] = child
                node.children[bit] = new
                return
            # They part after `common` bits (node.length < common < limit): a branch point.
            common = limit - differ.bit_length()
            host = bits - common
            fork = _Node(prefix >> host << host, common, False)
            fork.children[(child.prefix >> (host - 1)) & 1] = child
            fork.children[(prefix >> (host - 1)) & 1] = _Node(prefix, length, True)
            node.children[bit] = fork
            return
