"""Automatic bans after failed FTP logins. Standard library only; ``check`` is on the accept path.

A ban's key is the client address for IPv4 (IPv4-mapped IPv6 is IPv4), and the address's
network for IPv6 (``2001:db8:1:2::/64`` with the policy's ``ipv6_prefix``): one host on a
/64 can use any of its 2**64 addresses, so banning one of them would stop nobody.

``BanList`` holds the active bans and the recent failures per key. It does no I/O: the
caller records a new ban (``Sink.banned``) and restores saved ones at start (``add``).
Times are ``time.time()`` values passed in by the caller, so tests need no clock.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import deque
from dataclasses import dataclass

from gatekeeper.events import Ban
from gatekeeper.rules.model import BanPolicy

# Keys with recent failures kept at most (least recently failed dropped first). Each costs
# a few hundred bytes; 100,000 is more distinct failing addresses than one window of a
# real brute-force campaign brings, and bounds the history at some tens of megabytes.
MAX_TRACKED_KEYS = 100_000

_V6_BITS = 128
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6
_MASKS = tuple(((1 << p) - 1) << (_V6_BITS - p) for p in range(_V6_BITS + 1))

_Slot = str | tuple[int, int]  # IPv4: the address text; IPv6: (prefix length, network int)
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> _Address:
    """Parse; IPv4-mapped IPv6 becomes IPv4 and a zone id is dropped. ValueError if bad."""
    addr = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _check_prefix(prefix: int) -> int:
    if not 0 <= prefix <= _V6_BITS:
        raise ValueError(f"bad IPv6 prefix length {prefix}: expected 0 to {_V6_BITS}")
    return prefix


def _slot_of(addr: _Address, prefix: int) -> _Slot:
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr)
    return (prefix, int(addr) & _MASKS[prefix])


def _key_of(slot: _Slot) -> str:
    if isinstance(slot, str):
        return slot
    prefix, network = slot
    return str(ipaddress.IPv6Network((network, prefix)))


def ban_key(address: str, ipv6_prefix: int = 64) -> str:
    """The key a ban of ``address`` is stored under: the IPv4 address itself (also for
    ``::ffff:a.b.c.d``), or the IPv6 network of ``ipv6_prefix`` bits containing it.

    Raises ValueError for text that is not an address or a bad prefix length.
    """
    return _key_of(_slot_of(_address(address), _check_prefix(ipv6_prefix)))


def covering_keys(text: str) -> list[str]:
    """Every key a ban covering ``text`` could have: for an IPv4 address (or an
    IPv4-mapped one) the address; for an IPv6 address its network at each prefix length
    (/128 first); for a key (``2001:db8:1:2::/64``, ``192.0.2.1/32``) that key written the
    way bans write it. Raises ValueError for anything else."""
    text = text.strip()
    if "/" in text:
        return [_key_of(_parse_key(text))]
    addr = _address(text)
    if isinstance(addr, ipaddress.IPv4Address):
        return [str(addr)]
    return [_key_of(_slot_of(addr, p)) for p in range(_V6_BITS, -1, -1)]


def _parse_key(key: str) -> _Slot:
    """A stored key (or an address, read as a /128 for IPv6) → its slot. ValueError if bad."""
    if "/" in key:
        net = ipaddress.ip_network(key, strict=False)
        if isinstance(net, ipaddress.IPv4Network):
            if net.prefixlen != 32:
                raise ValueError(f"{key!r}: IPv4 bans are per address, not per network")
            return str(net.network_address)
        if net.network_address.ipv4_mapped is not None and net.prefixlen == _V6_BITS:
            return str(net.network_address.ipv4_mapped)
        return (net.prefixlen, int(net.network_address))
    return _slot_of(_address(key), _V6_BITS)


@dataclass(slots=True)
class _History:
    """Recent failures of one key: at most ``after`` times, and when to forget them."""

    times: deque[float]
    forget: float  # last failure + within: the history is useless after this


class BanList:
    """Active bans and failure histories, in memory. Not thread-safe (one event loop)."""

    def __init__(self, *, max_tracked: int = MAX_TRACKED_KEYS) -> None:
        self.max_tracked = max_tracked
        self._v4: dict[str, Ban] = {}
        self._v6: dict[tuple[int, int], Ban] = {}
        self._prefixes: dict[int, int] = {}  # IPv6 prefix length → active bans using it
        self._order: tuple[int, ...] = ()  # the keys of _prefixes, longest first
        self._failures: dict[str, _History] = {}  # least recently failed first

    def __len__(self) -> int:
        """Bans held (some may have expired and not been dropped yet)."""
        return len(self._v4) + len(self._v6)

    @property
    def tracked(self) -> int:
        """Keys with a failure history."""
        return len(self._failures)

    # -- the accept path ---------------------------------------------------------------------

    def check(self, address: str, now: float) -> Ban | None:
        """The active ban covering ``address``, or None. An expired ban found is dropped."""
        if not (self._v4 or self._v6):  # the normal case: nobody is banned
            return None
        if ":" not in address:  # IPv4 as the listener writes it: one dict lookup, no parsing
            return self._check_v4(address, now)
        try:  # inet_pton: a tenth of the time of ipaddress.ip_address
            packed = socket.inet_pton(socket.AF_INET6, address.split("%", 1)[0])
        except OSError:
            return None
        if packed.startswith(_MAPPED):
            return self._check_v4(socket.inet_ntop(socket.AF_INET, packed[12:]), now)
        value = int.from_bytes(packed, "big")
        for prefix in self._order:  # normally one
            slot = (prefix, value & _MASKS[prefix])
            ban = self._v6.get(slot)
            if ban is not None:
                if ban.until > now:
                    return ban
                self._remove(slot)  # expired; a shorter prefix may still cover the address
        return None

    def _check_v4(self, address: str, now: float) -> Ban | None:
        ban = self._v4.get(address)
        if ban is None:
            return None
        if ban.until <= now:
            del self._v4[address]
            return None
        return ban

    # -- failed logins -----------------------------------------------------------------------

    def failure(self, listener: str, address: str, now: float, policy: BanPolicy) -> Ban | None:
        """Count one failed login of ``address``. Returns the new Ban when this failure is
        the ``policy.after``-th within ``policy.within`` seconds for its key (the caller
        records it); None otherwise, and when an active ban already covers the address."""
        try:
            addr = _address(address)
            key = _key_of(_slot_of(addr, _check_prefix(policy.ipv6_prefix)))
        except ValueError:
            return None
        address = str(addr)
        if self.check(address, now) is not None:
            return None  # a session opened before the ban is still failing
        after = max(1, policy.after)
        history = self._failures.pop(key, None)  # re-inserted last: the dict stays in LRU order
        if history is None:
            history = _History(deque(maxlen=after), now)
            if len(self._failures) >= self.max_tracked:
                self._prune_failures(now)
                while len(self._failures) >= self.max_tracked:
                    del self._failures[next(iter(self._failures))]
        elif history.times.maxlen != after:  # the policy changed at a reload
            history.times = deque(history.times, maxlen=after)
        times = history.times
        times.append(now)
        horizon = now - policy.within
        while times and times[0] < horizon:
            times.popleft()
        if len(times) < after:
            history.forget = now + policy.within
            self._failures[key] = history
            return None
        ban = Ban(
            key=key,
            address=address,
            listener=listener,
            since=now,
            until=now + policy.duration,
            failures=len(times),
        )
        self.add(ban)
        return ban

    # -- administration ----------------------------------------------------------------------

    def add(self, ban: Ban) -> None:
        """Hold ``ban`` (a new one, or one restored from the database at start); it replaces
        any ban with the same key. Raises ValueError for a key that is not one."""
        slot = _parse_key(ban.key)
        self._failures.pop(_key_of(slot), None)
        if isinstance(slot, str):
            self._v4[slot] = ban
            return
        if slot not in self._v6:
            self._prefixes[slot[0]] = self._prefixes.get(slot[0], 0) + 1
            self._order = tuple(sorted(self._prefixes, reverse=True))
        self._v6[slot] = ban

    def lift(self, key_or_address: str) -> bool:
        """Remove the ban with this key, or every ban covering this address (any form:
        IPv4, IPv4-mapped, an IPv6 address inside a banned prefix). True if one was held."""
        try:
            if "/" in key_or_address:
                slots = [_parse_key(key_or_address)]
            else:
                addr = _address(key_or_address)
                if isinstance(addr, ipaddress.IPv4Address):
                    slots = [str(addr)]
                else:
                    slots = [_slot_of(addr, prefix) for prefix in self._order]
        except ValueError:
            return False
        found = False
        for slot in slots:
            found = self._remove(slot) or found
        return found

    def active(self, now: float) -> list[Ban]:
        """Bans in force at ``now``, oldest first."""
        bans = [b for b in (*self._v4.values(), *self._v6.values()) if b.until > now]
        bans.sort(key=lambda b: (b.since, b.key))
        return bans

    def prune(self, now: float) -> None:
        """Drop expired bans and failure histories too old to lead to a ban."""
        for slot in [s for s, b in self._v4.items() if b.until <= now]:
            self._remove(slot)
        for slot6 in [s for s, b in self._v6.items() if b.until <= now]:
            self._remove(slot6)
        self._prune_failures(now)

    # -- inside ------------------------------------------------------------------------------

    def _prune_failures(self, now: float) -> None:
        for key in [k for k, h in self._failures.items() if h.forget < now]:
            del self._failures[key]

    def _remove(self, slot: _Slot) -> bool:
        if isinstance(slot, str):
            return self._v4.pop(slot, None) is not None
        if self._v6.pop(slot, None) is None:
            return False
        prefix = slot[0]
        left = self._prefixes[prefix] - 1
        if left:
            self._prefixes[prefix] = left
        else:
            del self._prefixes[prefix]
            self._order = tuple(sorted(self._prefixes, reverse=True))
        return True
