"""BanList: thresholds and windows, IPv6 prefixes, mapped IPv4, expiry, lifts, bounded memory."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.bans import BanList, ban_key, covering_keys
from gatekeeper.events import Ban
from gatekeeper.rules.model import BanPolicy

POLICY = BanPolicy(after=3, within=600.0, duration=3600.0)
T = 1_800_000_000.0  # some time.time()


def fail(bans: BanList, address: str, *times: float, policy: BanPolicy = POLICY) -> list[Ban]:
    """Fail at each time; the bans made."""
    made = [bans.failure("ftp", address, t, policy) for t in times]
    return [b for b in made if b is not None]


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "prefix", "key"),
    [
        ("192.0.2.1", 64, "192.0.2.1"),
        ("::ffff:192.0.2.1", 64, "192.0.2.1"),
        ("::ffff:c000:201", 64, "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::9", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"),
        ("2001:db8::1", 128, "2001:db8::1/128"),
        ("fe80::1%eth0", 64, "fe80::/64"),
    ],
)
def test_ban_key(address: str, prefix: int, key: str) -> None:
    assert ban_key(address, prefix) == key


@pytest.mark.parametrize(
    ("address", "prefix"), [("nonsense", 64), ("192.0.2.300", 64), ("::1", 129)]
)
def test_ban_key_rejects_bad_input(address: str, prefix: int) -> None:
    with pytest.raises(ValueError):
        ban_key(address, prefix)


def test_covering_keys() -> None:
    assert covering_keys("::ffff:192.0.2.1") == ["192.0.2.1"]
    assert covering_keys("192.0.2.1/32") == ["192.0.2.1"]
    assert covering_keys(" 2001:db8:1:2::/64 ") == ["2001:db8:1:2::/64"]
    v6 = covering_keys("2001:db8:1:2::7")
    assert len(v6) == 129
    assert v6[0] == "2001:db8:1:2::7/128" and v6[-1] == "::/0"
    assert "2001:db8:1:2::/64" in v6
    for bad in ("nonsense", "10.0.0.0/8"):
        with pytest.raises(ValueError):
            covering_keys(bad)


# -- threshold and window --------------------------------------------------------------------


def test_ban_exactly_at_after_within_window() -> None:
    bans = BanList()
    assert fail(bans, "192.0.2.1", T, T + 300) == []
    assert bans.check("192.0.2.1", T + 300) is None
    ban = bans.failure("telnet", "192.0.2.1", T + 600, POLICY)  # third, exactly `within` later
    assert ban == Ban("192.0.2.1", "192.0.2.1", "telnet", T + 600, T + 4200, 3)
    assert bans.check("192.0.2.1", T + 601) == ban
    assert bans.check("192.0.2.2", T + 601) is None
    assert bans.tracked == 0  # the history of the key was reset


def test_failures_spread_wider_than_window_never_ban() -> None:
    bans = BanList()
    times = [T + i * 300.01 for i in range(100)]  # any 3 span more than 600 s
    assert fail(bans, "192.0.2.1", *times) == []
    assert bans.check("192.0.2.1", times[-1]) is None


def test_a_failure_while_banned_makes_no_second_ban() -> None:
    bans = BanList()
    (ban,) = fail(bans, "192.0.2.1", T, T + 1, T + 2)
    assert fail(bans, "192.0.2.1", T + 3, T + 4, T + 5) == []  # sessions opened before it
    assert bans.active(T + 6) == [ban]
    # After it expires, counting starts again from nothing.
    after = ban.until
    assert fail(bans, "192.0.2.1", after, after + 1) == []
    (again,) = fail(bans, "192.0.2.1", after + 2)
    assert again.since == after + 2


def test_policy_change_at_reload_resizes_history() -> None:
    bans = BanList()
    five = BanPolicy(after=5, within=600.0, duration=60.0)
    assert fail(bans, "192.0.2.1", T, T + 1, T + 2, T + 3, policy=five) == []
    two = BanPolicy(after=2, within=600.0, duration=60.0)
    (ban,) = fail(bans, "192.0.2.1", T + 4, policy=two)
    assert ban.failures == 2


def model_bans(times: list[float], policy: BanPolicy) -> list[float]:
    """Brute force: the times at which a ban is made."""
    made: list[float] = []
    history: list[float] = []
    until = -1.0
    for now in times:
        if now < until:
            continue  # banned: not counted
        history = [t for t in history if t >= now - policy.within] + [now]
        if len(history) >= policy.after:
            made.append(now)
            until = now + policy.duration
            history = []
    return made


@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=60),
    after=st.integers(min_value=1, max_value=6),
    within=st.floats(min_value=0.0, max_value=300.0),
    duration=st.floats(min_value=0.001, max_value=500.0),
)
def test_bans_match_brute_force(
    gaps: list[float], after: int, within: float, duration: float
) -> None:
    policy = BanPolicy(after=after, within=within, duration=duration)
    times = []
    now = T
    for gap in gaps:
        now += gap
        times.append(now)
    bans = BanList()
    made = [b.since for b in fail(bans, "2001:db8::1", *times, policy=policy)]
    assert made == model_bans(times, policy)


@given(
    spacing=st.floats(min_value=1.0, max_value=10_000.0),
    after=st.integers(min_value=2, max_value=6),
    count=st.integers(min_value=1, max_value=50),
)
def test_spaced_failures_never_ban(spacing: float, after: int, count: int) -> None:
    # `after` failures span (after - 1) * spacing: wider than the window, never a ban.
    within = (after - 1) * spacing * 0.999
    policy = BanPolicy(after=after, within=within, duration=3600.0)
    bans = BanList()
    assert fail(bans, "192.0.2.1", *(T + i * spacing for i in range(count)), policy=policy) == []


# -- IPv6 prefixes and mapped IPv4 ----------------------------------------------------------


def test_ipv6_same_prefix_shares_a_ban_other_prefix_not() -> None:
    bans = BanList()
    (ban,) = fail(bans, "2001:db8:1:2::1", T, T + 1, T + 2)
    assert ban.key == "2001:db8:1:2::/64"
    assert bans.check("2001:db8:1:2:ffff:ffff:ffff:ffff", T + 3) == ban
    assert bans.check("2001:db8:1:3::1", T + 3) is None
    assert bans.check("2001:db8:1:1:ffff:ffff:ffff:ffff", T + 3) is None


def test_ipv6_failures_from_one_prefix_add_up() -> None:
    bans = BanList()
    assert fail(bans, "2001:db8:1:2::1", T) == []
    assert fail(bans, "2001:db8:1:3::1", T + 1) == []  # another /64: its own count
    assert fail(bans, "2001:db8:1:2::2", T + 2) == []
    (ban,) = fail(bans, "2001:db8:1:2:aaaa::3", T + 3)
    assert (ban.key, ban.address) == ("2001:db8:1:2::/64", "2001:db8:1:2:aaaa::3")


def test_ipv6_prefix_follows_the_policy_and_several_lengths_coexist() -> None:
    bans = BanList()
    wide = BanPolicy(after=1, within=60.0, duration=60.0, ipv6_prefix=48)
    (b48,) = fail(bans, "2001:db8:1:2::1", T, policy=wide)
    assert b48.key == "2001:db8:1::/48"
    assert bans.check("2001:db8:1:ffff::1", T) == b48
    narrow = BanPolicy(after=1, within=60.0, duration=120.0, ipv6_prefix=64)
    (b64,) = fail(bans, "2001:db8:9:2::1", T, policy=narrow)
    assert bans.check("2001:db8:9:2::77", T) == b64
    assert bans.check("2001:db8:1:ffff::1", T) == b48
    assert bans.check("2001:db8:9:3::1", T) is None
    assert bans.check("2001:db8:1:ffff::1", T + 61) is None  # the /48 expired
    assert bans.check("2001:db8:9:2::1", T + 61) == b64


@given(
    network=st.integers(min_value=1, max_value=(1 << 64) - 1),  # 0: ::ffff:0:0/96 is IPv4
    host_a=st.integers(min_value=0, max_value=(1 << 64) - 1),
    host_b=st.integers(min_value=0, max_value=(1 << 64) - 1),
    other=st.integers(min_value=0, max_value=(1 << 64) - 1),
)
def test_ipv6_prefix_property(network: int, host_a: int, host_b: int, other: int) -> None:
    def text(value: int) -> str:
        return str(ipaddress.IPv6Address(value))

    a = text(network << 64 | host_a)
    b = text(network << 64 | host_b)
    assert ban_key(a, 64) == ban_key(b, 64)
    bans = BanList()
    (ban,) = fail(bans, a, T, policy=BanPolicy(after=1))
    assert ban.key == ban_key(a, 64)
    assert bans.check(b, T) == ban
    if other != network:
        assert bans.check(text(other << 64 | host_a), T) is None


def test_ipv4_mapped_counts_as_ipv4() -> None:
    bans = BanList()
    assert fail(bans, "::ffff:192.0.2.1", T, T + 1) == []
    (ban,) = fail(bans, "192.0.2.1", T + 2)
    assert (ban.key, ban.address) == ("192.0.2.1", "192.0.2.1")
    assert bans.check("::ffff:192.0.2.1", T + 3) == ban
    assert bans.check("::FFFF:C000:0201", T + 3) == ban
    (mapped,) = fail(bans, "::ffff:198.51.100.7", T, T, T)
    assert mapped.address == "198.51.100.7"
    assert bans.check("198.51.100.7", T) == mapped


def test_check_of_nonsense_is_none() -> None:
    bans = BanList()
    fail(bans, "192.0.2.1", T, T, T)
    fail(bans, "2001:db8::1", T, T, T)
    for text in ("", "nonsense", "::g", "192.0.2.1.5"):
        assert bans.check(text, T) is None
    assert bans.failure("ftp", "nonsense", T, POLICY) is None


# -- expiry, restore, lift -------------------------------------------------------------------


def test_expiry_is_lazy_and_exact() -> None:
    bans = BanList()
    (ban,) = fail(bans, "192.0.2.1", T, T, T)
    assert bans.check("192.0.2.1", ban.until - 0.001) == ban
    assert len(bans) == 1
    assert bans.check("192.0.2.1", ban.until) is None  # until is the first free moment
    assert len(bans) == 0


def test_add_restores_and_active_lists() -> None:
    bans = BanList()
    v4 = Ban("192.0.2.1", "192.0.2.1", "ftp", T - 10, T + 100, 3)
    v6 = Ban("2001:db8:1:2::/64", "2001:db8:1:2::5", "ftp", T - 20, T + 100, 3)
    old = Ban("192.0.2.9", "192.0.2.9", "ftp", T - 100, T - 1, 3)
    for ban in (v4, v6, old):
        bans.add(ban)
    assert bans.check("2001:db8:1:2::77", T) == v6
    assert bans.active(T) == [v6, v4]
    bans.prune(T)
    assert len(bans) == 2
    with pytest.raises(ValueError):
        bans.add(Ban("bogus", "x", "ftp", T, T + 1, 1))
    with pytest.raises(ValueError):
        bans.add(Ban("10.0.0.0/8", "x", "ftp", T, T + 1, 1))


@pytest.mark.parametrize(
    ("address", "lift"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1", "::ffff:192.0.2.1"),
        ("192.0.2.1", "192.0.2.1/32"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"),
        ("2001:db8:1:2::1", "2001:DB8:1:2::1"),
    ],
)
def test_lift_by_address_or_key(address: str, lift: str) -> None:
    bans = BanList()
    fail(bans, address, T, T, T)
    fail(bans, "198.51.100.1", T, T, T)  # another ban stays
    assert bans.lift(lift) is True
    assert bans.check(address, T) is None
    assert bans.check("198.51.100.1", T) is not None
    assert bans.lift(lift) is False  # nothing left to lift


def test_lift_of_nothing_or_nonsense() -> None:
    bans = BanList()
    assert bans.lift("192.0.2.1") is False
    assert bans.lift("nonsense") is False
    assert bans.lift("2001:db8::/129") is False
    fail(bans, "2001:db8:1:2::1", T, T, T)
    assert bans.lift("2001:db8:1:3::1") is False
    assert bans.lift("2001:db8:1::/48") is False  # a key nobody was banned under


def test_an_expired_narrow_ban_does_not_hide_a_wider_one() -> None:
    bans = BanList()
    wide = Ban("2001:db8:1::/48", "2001:db8:1:2::1", "ftp", T, T + 100, 3)
    bans.add(wide)
    bans.add(Ban("2001:db8:1:2::/64", "2001:db8:1:2::1", "ftp", T, T + 10, 3))
    assert bans.check("2001:db8:1:2::5", T + 50) == wide
    assert len(bans) == 1


def test_lift_by_address_removes_every_covering_ban() -> None:
    bans = BanList()
    bans.add(Ban("2001:db8:1::/48", "2001:db8:1:2::1", "ftp", T, T + 100, 3))
    bans.add(Ban("2001:db8:1:2::/64", "2001:db8:1:2::1", "ftp", T, T + 100, 3))
    assert bans.lift("2001:db8:1:2::1") is True
    assert len(bans) == 0
    assert bans.check("2001:db8:1:2::1", T) is None


# -- bounded memory -------------------------------------------------------------------------


def test_prune_drops_stale_histories_and_expired_bans() -> None:
    bans = BanList()
    for i in range(1000):
        fail(bans, f"10.0.{i // 250}.{i % 250}", T + i * 0.1)
    fail(bans, "192.0.2.1", T, T, T)
    fail(bans, "2001:db8::1", T, T, T)
    assert bans.tracked == 1000
    bans.prune(T + 100 + POLICY.within)  # the last failure was at T + 99.9
    assert bans.tracked == 0
    assert len(bans) == 2
    bans.prune(T + POLICY.duration)
    assert len(bans) == 0
    assert bans.check("2001:db8::1", T) is None  # the /64 is gone from the lookup too


def test_prune_keeps_recent_histories() -> None:
    bans = BanList()
    fail(bans, "192.0.2.1", T, T + 500)
    bans.prune(T + 1000)  # 500 s after the last failure: still within the window
    assert bans.tracked == 1
    assert fail(bans, "192.0.2.1", T + 1000) == []  # the one at T left the window
    (ban,) = fail(bans, "192.0.2.1", T + 1100)  # T + 500, T + 1000, T + 1100
    assert ban.failures == 3


def test_history_per_key_is_bounded() -> None:
    bans = BanList()
    slow = BanPolicy(after=3, within=10.0, duration=60.0)
    for i in range(10_000):
        fail(bans, "192.0.2.1", T + i * 6.0, policy=slow)  # never three within 10 s
    history = bans._failures["192.0.2.1"]
    assert len(history.times) <= 3


def test_tracked_keys_are_capped_least_recent_first() -> None:
    bans = BanList(max_tracked=10)
    for i in range(100):
        fail(bans, f"10.0.0.{i}", T + i)
    assert bans.tracked == 10
    fail(bans, "10.0.0.95", T + 100)  # a tracked key: refreshed, no eviction
    fail(bans, "10.0.0.200", T + 101)  # evicts the least recently failed: 10.0.0.90
    assert "10.0.0.90" not in bans._failures
    assert "10.0.0.95" in bans._failures
    assert bans.tracked == 10
