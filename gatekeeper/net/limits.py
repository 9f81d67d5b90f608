"""Per-address limits: concurrent sessions and new connections per time window.

Like xinetd's ``per_source`` and HAProxy's ``conn_rate``: over the limit is a rejection for
that address only. State is a dict per address, pruned as it empties, so memory follows the
number of addresses active in the window, not the number ever seen.
"""

from __future__ import annotations

from collections import deque

from gatekeeper.settings import Limits


class AddressLimits:
    """Counts sessions and recent connections per client address for one listener."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._active: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def admit(self, address: str, now: float) -> bool:
        """Count a new connection from ``address``; False if it is over a limit.

        Every attempt counts toward the rate, refused ones too (like HAProxy's conn_rate):
        an address that keeps hammering stays over the limit until it pauses for a window.
        """
        over = False
        rate = self.limits.rate
        if rate is not None:
            count, window = rate
            times = self._recent.get(address)
            if times is None:
                times = self._recent[address] = deque(maxlen=count)
            elif len(times) == count and now - times[0] < window:
                over = True
            times.append(now)
        per_address = self.limits.per_address
        if per_address is not None and self._active.get(address, 0) >= per_address:
            over = True
        return not over

    def opened(self, address: str) -> None:
        self._active[address] = self._active.get(address, 0) + 1

    def closed(self, address: str) -> None:
        left = self._active.get(address, 0) - 1
        if left > 0:
            self._active[address] = left
        else:
            self._active.pop(address, None)

    def prune(self, now: float) -> None:
        """Forget rate history older than the window (called every few seconds)."""
        if self.limits.rate is None:
            self._recent.clear()
            return
        window = self.limits.rate[1]
        stale = [a for a, times in self._recent.items() if not times or now - times[-1] >= window]
        for address in stale:
            del self._recent[address]

    def active(self, address: str) -> int:
        return self._active.get(address, 0)
