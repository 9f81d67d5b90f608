"""Longest-prefix match over integer addresses: a radix trie and its compiled lookup table.

``RadixTrie`` is a path-compressed binary (Patricia) trie: a node exists only where a
prefix was added or where two branches part, so a walk down never visits one node per
bit. ``RadixTrie.compile`` flattens the prefixes into a ``PrefixTable``: the address space
cut into sorted disjoint intervals, each owned by the most specific prefix covering it, so
a lookup is one ``bisect_right`` on a flat array of ints. ``compile_prefixes`` makes the
same table from many prefixes at once, with no trie. Everything is iterative: 128-bit keys
never approach the recursion limit.
"""

from __future__ import annotations

import gc
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from operator import le
from typing import Generic, TypeAlias, TypeVar

T = TypeVar("T")
V = TypeVar("V")

#: Every stored prefix containing an address, most specific first, as (length, values).
Chain: TypeAlias = tuple[tuple[int, tuple[V, ...]], ...]

_ADDRESS_BITS = (32, 128)  # IPv4, IPv6
_LENGTH_BITS = 8  # a prefix and its length share one int key: prefix << 8 | length
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
# Array type codes: the bounds of an IPv4 table (32 bits, unsigned), prefix numbers and
# lengths. An IPv6 table keeps its bounds as a list of ints: no array holds 128 bits.
_U32 = "I" if array("I").itemsize >= 4 else "L"
_INDEX = "i" if array("i").itemsize >= 4 else "l"
_BYTE = "B"

#: Items a C call (a sort, a copy) takes at a time in a build that may run in a worker
#: thread: a call over 100,000 would hold the GIL, and stall the event loop, for tens of ms.
CHUNK = 8192


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

    Making 100,000 of them (the networks of a long list) sets off full collections that
    rescan the whole heap and double the time while finding nothing to free.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``: for C calls (``map``, ``sorted``, ``array``) over a
    slice at a time, short enough not to hold the GIL for long."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: Buckets ``sorted_ints`` spreads the items over (as a power of two).
_BUCKET_BITS = 12


def sorted_ints(items: list[int]) -> list[int]:
    """``sorted(items)`` without holding the GIL for long.

    ``sorted`` of 100,000 ints is one C call of 20-40 ms, long enough to stall the event
    loop while a worker thread reloads. Above ``CHUNK`` items, they go into buckets by
    value (a Python loop, which lets other threads in) that are sorted one by one, each
    the same way: about the time of one ``sorted`` in all.
    """
    if len(items) <= CHUNK:
        return sorted(items)
    if all(map(le, items, islice(items, 1, None))):  # sorted already, as most lists are
        return list(items)
    low = min(items)
    span = max(items) - low
    if not span:  # all equal
        return list(items)
    shift = max(0, span.bit_length() - _BUCKET_BITS)
    buckets: list[list[int]] = [[] for _ in range((span >> shift) + 1)]
    for item in items:
        buckets[(item - low) >> shift].append(item)
    found: list[int] = []
    for bucket in buckets:
        if bucket:
            found += sorted_ints(bucket) if len(bucket) > 1 else bucket
    return found


class PrefixTable(Generic[V]):
    """A compiled, read-only ``RadixTrie``: sorted interval bounds, each interval's owner.

    Interval ``i`` runs from ``bounds[i - 1]`` (0 for the first) up to ``bounds[i]`` (the
    end of the address space for the last). Its owner is the most specific prefix
    covering it, or -1. Prefixes are numbered in address order; prefix ``k`` has a length,
    a parent (the most specific prefix containing it, or -1) and its values. All of it is
    flat arrays and lists: no object per interval or prefix, so a table of 100,000
    prefixes is small and gives the garbage collector nothing to scan.
    """

    __slots__ = (
        "_buckets",
        "_first",
        "_index",
        "_lengths",
        "_low",
        "_more",
        "_owners",
        "_parents",
        "_shift",
        "bounds",
    )

    def __init__(
        self,
        bounds: Sequence[int],
        owners: Sequence[int],
        lengths: Sequence[int],
        parents: Sequence[int],
        first: list[V],
        more: dict[int, tuple[V, ...]],
    ) -> None:
        """Use ``RadixTrie.compile``. ``first`` and ``more``: prefix ``k``'s values are
        ``first[k]`` and then ``more[k]`` where it has more than one."""
        if len(owners) != len(bounds) + 1:
            raise ValueError("a prefix table needs one owner more than it has bounds")
        if not len(lengths) == len(parents) == len(first):
            raise ValueError("a prefix table needs a length, parent and value per prefix")
        self.bounds = bounds
        self._owners = owners
        self._lengths = lengths
        self._parents = parents
        self._first = first
        self._more = more
        # An index over the bounds: the span from the first to the last cut into about
        # len(bounds) / 32 buckets of 2 ** shift addresses; index[k] is the first bound in
        # bucket k or after. A lookup bisects one bucket's few dozen bounds, not all
        # 200,000: half the time, the rest being cache misses of a long bisect.
        self._low = bounds[0] if bounds else 0
        span = bounds[-1] - self._low if bounds else 0
        self._shift = max(0, span.bit_length() - max(1, len(bounds).bit_length() - 5))
        self._buckets = (span >> self._shift) + 1
        index = array(_INDEX)
        found = 0
        for bucket in range(self._buckets + 1):
            found = bisect_left(bounds, self._low + (bucket << self._shift), found)
            index.append(found)
        self._index = index

    def interval(self, address: int) -> int:
        """The interval holding ``address`` (in range, not checked)."""
        offset = address - self._low
        if offset < 0:
            return 0
        bucket = offset >> self._shift
        if bucket >= self._buckets:
            return len(self.bounds)
        index = self._index
        return bisect_right(self.bounds, address, index[bucket], index[bucket + 1])

    def chain(self, interval: int) -> Chain[V]:
        """Every prefix covering ``interval``, most specific first."""
        found = []
        number = self._owners[interval]
        while number >= 0:
            found.append((self._lengths[number], self._values(number)))
            number = self._parents[number]
        return tuple(found)

    def lookup(self, address: int) -> Chain[V]:
        """Every prefix containing ``address`` (in range, not checked), most specific first."""
        return self.chain(self.interval(address))

    def longest_match(self, address: int) -> tuple[int, tuple[V, ...]] | None:
        """The most specific prefix containing ``address`` (in range, not checked) as
        (length, values), or None."""
        number = self._owners[self.interval(address)]
        return None if number < 0 else (self._lengths[number], self._values(number))

    def covers(self, address: int) -> bool:
        """Is ``address`` (in range, not checked) in any prefix?"""
        return self._owners[self.interval(address)] >= 0

    def __len__(self) -> int:
        """Number of intervals."""
        return len(self._owners)

    def _values(self, number: int) -> tuple[V, ...]:
        more = self._more.get(number)
        return (self._first[number],) if more is None else (self._first[number], *more)


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
        keys: list[int] = []
        values: list[V] = []
        for key, value in self._first.items():
            keys.append(key)
            values.append(value)
            for later in self._more.get(key, ()):
                keys.append(key)
                values.append(later)
        shift = len(keys).bit_length()
        return _compile(self._bits, [key << shift | i for i, key in enumerate(keys)], values)

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


def compile_prefixes(
    bits: int, prefixes: Sequence[int], lengths: Sequence[int], values: Sequence[V]
) -> PrefixTable[V]:
    """The table of a ``RadixTrie(bits)`` given ``add(prefixes[i], lengths[i], values[i])``
    for each ``i`` in order, without the 100,000 calls a big rule set would take.

    Unchecked: the prefixes must fit in ``bits`` and have no host bits set, as those of
    ``ipaddress`` networks always do.
    """
    if not len(prefixes) == len(lengths) == len(values):
        raise ValueError("compile_prefixes needs a length and a value per prefix")
    if bits not in _ADDRESS_BITS:
        raise ValueError(f"address width must be 32 or 128 bits, not {bits}")
    shift = len(values).bit_length()
    pairs = enumerate(zip(prefixes, lengths, strict=True))
    return _compile(bits, [(p << _LENGTH_BITS | n) << shift | i for i, (p, n) in pairs], values)


def _compile(bits: int, tagged: list[int], values: Sequence[V]) -> PrefixTable[V]:
    """The table of ``values[i]`` at each ``key << shift | i`` in ``tagged`` (``key`` is
    ``prefix << _LENGTH_BITS | length``, ``shift`` the bits of ``len(values)``), a prefix's
    values in the order given."""
    end_of_space = 1 << bits
    sizes = [1 << (bits - length) for length in range(bits + 1)]  # addresses in a prefix
    # Sorted, the prefixes come by start, enclosing before enclosed, and a prefix's values
    # in the order given.
    shift = len(values).bit_length()
    place = (1 << shift) - 1
    tagged = sorted_ints(tagged)
    first: list[V] = []  # per prefix, numbered in address order: its first value,
    more: dict[int, list[V]] = {}  # its later values (where it has any),
    lengths: list[int] = []  # its length,
    parents: list[int] = []  # the prefix enclosing it, or -1 (lists while built: faster)
    # Interval i runs from starts[i] to starts[i + 1] and is owned by owners[i]. A prefix
    # opens an interval at its start; its end opens one owned by the enclosing prefix.
    # `ends` and `open_` hold the end and number of the prefixes enclosing the current one
    # (after a sentinel), outermost first; `top` and `top_end` are the last of them.
    starts = [0]
    owners = [-1]
    ends: list[int] = []
    open_: list[int] = []
    top, top_end = -1, end_of_space + 1
    last_start = 0  # starts[-1]
    number = -1
    key = -1
    tagged.append(end_of_space << _LENGTH_BITS << shift)  # a sentinel: closes all
    for tag in tagged:
        previous, key = key, tag >> shift
        if key == previous:  # the same prefix again
            more.setdefault(number, []).append(values[tag & place])
            continue
        start = key >> _LENGTH_BITS
        while top_end <= start:  # close the prefixes that end here or before
            end = top_end
            top, top_end = open_.pop(), ends.pop()
            if end == last_start:  # an enclosed prefix ended here too: replace its interval
                owners[-1] = top
            else:
                starts.append(end)
                owners.append(top)
                last_start = end
        if start == end_of_space:  # the sentinel
            break
        number += 1
        length = key & _LENGTH_MASK
        lengths.append(length)
        parents.append(top)
        first.append(values[tag & place])
        if start == last_start:  # the interval opened here is empty: replace it
            owners[-1] = number
        else:
            starts.append(start)
            owners.append(number)
            last_start = start
        open_.append(top)
        ends.append(top_end)
        top, top_end = number, start + sizes[length]
    if last_start == end_of_space:  # opened by a prefix ending at the top: no such interval
        del starts[-1], owners[-1]
    del starts[0]
    later = {number: tuple(found) for number, found in more.items()}
    return PrefixTable(
        starts if bits == 128 else _compact(_U32, starts),
        _compact(_INDEX, owners),
        _compact(_BYTE, lengths),
        _compact(_INDEX, parents),
        first,
        later,
    )


def _compact(code: str, items: list[int]) -> array[int]:
    """``array(code, items)``, a ``CHUNK`` at a time."""
    found = array(code)
    for part in chunks(items):
        found.extend(part)
    return found
