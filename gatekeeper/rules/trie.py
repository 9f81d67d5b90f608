"""Longest-prefix match over integer addresses: a radix trie and its compiled lookup table.

``RadixTrie`` is a path-compressed binary (Patricia) trie: a node exists only where a
prefix was added or where two branches part, so a lookup visits at most one node per
stored prefix on the way down, never one per bit. ``RadixTrie.compile`` flattens it into
a ``PrefixTable``: the address space cut into sorted disjoint intervals, each with the
chain of prefixes covering it, so a lookup is one ``bisect_right`` on a list of ints.
Everything is iterative: 128-bit keys never approach the recursion limit.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Generic, TypeAlias, TypeVar

V = TypeVar("V")

#: Every stored prefix containing an address, most specific first, as (length, values).
Chain: TypeAlias = tuple[tuple[int, tuple[V, ...]], ...]

_ADDRESS_BITS = (32, 128)  # IPv4, IPv6
_LENGTH_BITS = 8  # a prefix and its length share one int key: prefix << 8 | length
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1


class _Node(Generic[V]):
    """A prefix (``length`` leading bits of ``prefix``); ``values`` is None on a branch point."""

    __slots__ = ("children", "length", "prefix", "values")

    def __init__(self, prefix: int, length: int, values: list[V] | None) -> None:
        self.prefix = prefix
        self.length = length
        self.values = values
        self.children: list[_Node[V] | None] = [None, None]


class PrefixTable(Generic[V]):
    """A compiled, read-only ``RadixTrie``: sorted interval bounds and one chain per interval.

    Interval ``i`` runs from ``bounds[i - 1]`` (0 for the first) up to ``bounds[i]``;
    intervals covered by the same prefixes share one chain tuple.
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

    ``add`` only files the value under its prefix; the trie nodes are grown from the new
    prefixes on the next ``matches`` or ``longest_match``. ``compile`` needs no nodes (it
    sorts the prefixes), so building a table for a large rule set never walks the trie.
    """

    __slots__ = ("_bits", "_prefixes", "_root", "_unplaced")

    def __init__(self, bits: int) -> None:
        if bits not in _ADDRESS_BITS:
            raise ValueError(f"address width must be 32 or 128 bits, not {bits}")
        self._bits = bits
        self._prefixes: dict[int, list[V]] = {}  # _key(prefix, length) -> values
        self._unplaced: list[int] = []  # keys of prefixes not yet in the trie nodes
        self._root: _Node[V] = _Node(0, 0, None)

    def __len__(self) -> int:
        """Number of distinct prefixes."""
        return len(self._prefixes)

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
        values = self._prefixes.get(key)
        if values is None:
            self._prefixes[key] = [value]
            self._unplaced.append(key)
        else:
            values.append(value)

    def matches(self, address: int) -> list[tuple[int, tuple[V, ...]]]:
        """Every prefix containing ``address``, most specific first, as (length, values)."""
        bits = self._ready(address)
        found: list[tuple[int, tuple[V, ...]]] = []
        node: _Node[V] | None = self._root
        while node is not None and not (address ^ node.prefix) >> (bits - node.length):
            if node.values is not None:
                found.append((node.length, tuple(node.values)))
            if node.length == bits:
                break
            node = node.children[(address >> (bits - 1 - node.length)) & 1]
        found.reverse()
        return found

    def longest_match(self, address: int) -> tuple[int, tuple[V, ...]] | None:
        """The most specific prefix containing ``address`` as (length, values), or None."""
        bits = self._ready(address)
        best: tuple[int, list[V]] | None = None
        node: _Node[V] | None = self._root
        while node is not None and not (address ^ node.prefix) >> (bits - node.length):
            if node.values is not None:
                best = (node.length, node.values)
            if node.length == bits:
                break
            node = node.children[(address >> (bits - 1 - node.length)) & 1]
        return None if best is None else (best[0], tuple(best[1]))

    def compile(self) -> PrefixTable[V]:
        """Flatten into a ``PrefixTable``; later ``add`` calls do not change it."""
        bits = self._bits
        end_of_space = 1 << bits
        empty: Chain[V] = ()
        # While building, interval i starts at bounds[i]; the first (at 0) is dropped below.
        bounds = [0]
        chains = [empty]

        def cut(at: int, chain: Chain[V]) -> None:
            """From ``at`` on, ``chain`` applies (``at`` never decreases from call to call)."""
            if at == bounds[-1]:  # the last interval is empty: replace its chain
                chains[-1] = chain
                if len(chains) > 1 and chains[-2] is chain:
                    del bounds[-1], chains[-1]
            elif chains[-1] is not chain:
                bounds.append(at)
                chains.append(chain)

        # Sorted keys give prefixes by start, enclosing before enclosed. `ends` and `open_`
        # hold the end and chain of the prefixes enclosing the current one, outermost first.
        ends = [end_of_space]
        open_ = [empty]
        prefixes = self._prefixes
        for key in sorted(prefixes):
            start = key >> _LENGTH_BITS
            length = key & _LENGTH_MASK
            while ends[-1] <= start:
                end = ends.pop()
                open_.pop()
                cut(end, open_[-1])
            chain = ((length, tuple(prefixes[key])), *open_[-1])
            cut(start, chain)
            ends.append(start + (1 << (bits - length)))
            open_.append(chain)
        while len(ends) > 1:
            end = ends.pop()
            open_.pop()
            if end != end_of_space:
                cut(end, open_[-1])
        del bounds[0]
        return PrefixTable(bounds, chains)

    def _ready(self, address: int) -> int:
        """Check ``address``, put every prefix added since the last query into the nodes."""
        bits = self._bits
        if not 0 <= address < 1 << bits:
            raise ValueError(f"address {address:#x} does not fit in {bits} bits")
        for key in self._unplaced:
            self._place(key >> _LENGTH_BITS, key & _LENGTH_MASK, self._prefixes[key])
        self._unplaced.clear()
        return bits

    def _place(self, prefix: int, length: int, values: list[V]) -> None:
        """Insert a new prefix into the nodes (path-compressed: no single-child chains)."""
        bits = self._bits
        node = self._root
        while True:
            if node.length == length:  # only the root: other prefixes are placed once
                node.values = values
                return
            bit = (prefix >> (bits - 1 - node.length)) & 1
            child = node.children[bit]
            if child is None:
                node.children[bit] = _Node(prefix, length, values)
                return
            limit = min(child.length, length)
            differ = (child.prefix ^ prefix) >> (bits - limit)  # first `limit` bits, XORed
            if not differ and child.length <= length:
                node = child  # child's prefix contains the new one: go down
                continue
            if not differ:  # the new prefix contains child's: slot it in above the child
                new = _Node(prefix, length, values)
                new.children[(child.prefix >> (bits - 1 - length)) & 1] = child
                node.children[bit] = new
                return
            # They part after `common` bits (node.length < common < limit): a branch point.
            common = limit - differ.bit_length()
            host = bits - common
            fork: _Node[V] = _Node(prefix >> host << host, common, None)
            fork.children[(child.prefix >> (host - 1)) & 1] = child
            fork.children[(prefix >> (host - 1)) & 1] = _Node(prefix, length, values)
            node.children[bit] = fork
            return
