"""Fuzzing the config and rule-file loader with mutated and hostile files.

Contract: ``config.load`` returns settings and rules, or raises ``ConfigError`` whose
every problem names one of the files it read and a line inside that file, with a message
of bounded length (a 1 MB line is not quoted whole); nothing else escapes, however the
bytes are broken (NULs, invalid UTF-8, tabs, lone quotes and brackets, huge numbers) or
built (nesting thousands deep, alias and merge-key "billion laughs", huge files).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper import config
from gatekeeper.errors import ConfigError, GatekeeperError
from tests.fuzz import fuzz_settings
from tests.fuzz.mutate import Edit, apply, edits

CONFIG = b"""\
database: var/gk.db
rules: [rules.d/*.yaml]
web: {listen: "127.0.0.1:8020"}
listeners:
  - name: ftp
    protocol: ftp
    listen: "127.0.0.1:0"
    upstream: "127.0.0.1:21"
    reject: reply
    passive_ports: "50000-50099"
    limits: {per_address: 10, rate: "30/60s"}
    timeouts: {idle: 15m}
  - {name: telnet, protocol: telnet, listen: "[::1]:0", upstream: "ibmi.example.com:23"}
timeouts: {connect: 10s, idle: 30m, drain: 30s, proxy_header: 5s}
retention: 400d
"""
RULES = b"""\
default: deny
allow:
  - 10.0.0.0/8
  - ::1
  - {network: 198.51.100.0/24, listeners: [ftp], hours: "Mon-Fri 07:00-19:00", comment: vendor}
deny:
  - 10.66.0.0/16
  - {file: ../lists/drop.txt, comment: DROP}
privileged: [10.1.1.0/24]
ftp:
  deny_users: [ADMIN, ADMINISTRA*, ROOT, TEST*, '*SEC*']
  users: {PARTNER1: {commands: [RETR, LIST, NLST, CWD, PWD]}}
  ban: {after: 3, within: 10m, for: 1h, ipv6_prefix: 64}
"""
NETWORKS = b"""\
; Spamhaus DROP style
192.0.2.0/24 ; SBL1
203.0.113.0/24
2001:db8::/32 # v6
"""


def _levels(n: int, fan: int, item: str) -> bytes:
    """Anchors each made of ``fan`` aliases of the one before: ``fan ** n`` items if expanded."""
    lines = [f"l0: &l0 [{item}]"]
    for i in range(1, n + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]")
    return ("\n".join(lines) + "\n").encode()


def _merges(n: int, fan: int, tag: str) -> bytes:
    """Merge keys of merge keys: YAML 1.1 would copy ``fan ** n`` pairs."""
    lines = ["m0: &m0 {k: v}"]
    for i in range(1, n + 1):
        lines.append(f"m{i}: &m{i} {{{tag}: [{', '.join([f'*m{i - 1}'] * fan)}]}}")
    return ("\n".join(lines) + "\n").encode()


# Whole hostile rule files, each mutated further by the edits.
HOSTILE_RULES = [
    RULES,
    RULES + _levels(9, 10, "ADMIN") + b"ftp2: *l9\n",
    RULES + _merges(9, 10, "<<"),
    RULES + _merges(9, 10, "!!merge <<"),
    b"allow: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    b"allow:\n" + b"".join(b"  " * i + b"- \n" for i in range(300)),
    b"default: !!timestamp nope\nallow: [!!int " + b"9" * 5000 + b"]\n",
    b"ftp: {ban: {after: " + b"9" * 5000 + b", within: 1e999999s, for: -1}}\n",
    b"default: deny\nallow: [&a 10.0.0.0/8, *a, *b]\n",
    b"\xef\xbb\xbfdefault: deny\r\nallow:\r\n\t- 10.0.0.0/8\r\n",
    b"--- !!python/object/apply:os.system ['true']\n",
    b"default: deny\n...\n---\ndefault: allow\n",
]  # fmt: skip
HOSTILE_LISTS = [
    NETWORKS,
    b"1.2.3.0/33\n::/129\n10.0.0.0/-1\n10.0.0.0/99999999999999999999\n",
    b"010.1.1.1\n1.2.3\n0x7f000001\n1.2.3.4/255.255.255.0\n1.2.3.4-1.2.3.9\n",
    b"fe80::1%eth0\n::ffff:1.2.3.0/120\n::1.2.3.4\n1::2::3\n:::\n1:2:3:4:5:6:7:8:9\n[::1]\n",
    b"\xd9\xa1.2.3.4\n\xef\xbc\x91.2.3.4\n1.2.3.4/\xd9\xa3\xd9\xa2\n",
    b"x" * (1 << 16) + b"\n" + b"1" * (1 << 16),
]
# Huge files: fed whole once each (pure-Python YAML reads ~20,000 lines a second).
HUGE_RULES = [
    b"deny:\n" + b"  - 10.0.0.0/8\n" * 20_000,
    RULES.replace(b"/16", b"/16" + b"6" * (1 << 20)),
]
HUGE_LISTS = [b"192.0.2.0/24\n" * 100_000, b"x" * (1 << 20) + b"\n" + b"1" * (1 << 20)]
BOMBS = [0, 0, 0, 1 << 10, 1 << 16]  # bytes of "a" appended to a value, or nothing


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loader")
    (folder / "rules.d").mkdir()
    (folder / "lists").mkdir()
    return folder


def write(folder: Path, config_text: bytes, rules: bytes, networks: bytes) -> dict[str, bytes]:
    """The three files, by the path the loader names them with."""
    files = {
        str(folder / "gatekeeper.yaml"): config_text,
        str(folder / "rules.d" / "10.yaml"): rules,
        str(folder / "lists" / "drop.txt"): networks,
    }
    for path, data in files.items():
        Path(path).write_bytes(data)
    return files


def lines_of(data: bytes) -> int:
    """Lines as an editor may count them: YAML also breaks lines at a lone CR, NEL, LS, PS."""
    yaml_breaks = data.replace(b"\r\n", b"\n").translate(None, b"\n").count(b"\r")
    unicode_breaks = sum(data.count(b) for b in (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9"))
    return data.count(b"\n") + yaml_breaks + unicode_breaks + 1


# Every message fits: the text of the problem plus values quoted at most MAX_SHOWN long.
MAX_MESSAGE = 800


def check(files: dict[str, bytes]) -> list[str]:
    """Load; nothing on success, else check and return each problem's message."""
    config_path = next(iter(files))
    lines = {path: lines_of(data) for path, data in files.items()}
    try:
        settings, spec = config.load(config_path)
    except ConfigError as exc:
        problems, text = exc.problems, str(exc)  # asserted below, outside this handler
    except GatekeeperError as exc:
        raise AssertionError(f"not a ConfigError: {type(exc)}") from None
    else:
        for rule in spec.rules:  # loaded: every rule points into a file read
            assert rule.source.file in files and 1 <= rule.source.line <= lines[rule.source.file]
        assert settings.listeners
        return []
    assert problems
    assert text == "\n".join(str(p) for p in problems)
    for p in problems:
        assert p.file in files, p.file  # one of the files read
        assert p.line is not None and 1 <= p.line <= lines[p.file], (p.line, p.message[:200])
        assert len(p.message) <= MAX_MESSAGE, (len(p.message), p.message[:200])
        assert str(p).startswith(f"{p.file}:{p.line}: ")
    return [p.message for p in problems]


@fuzz_settings(0.4)
@given(
    st.sampled_from(["config", "rules", "list"]),
    st.sampled_from(range(len(HOSTILE_RULES))),
    st.sampled_from(range(len(HOSTILE_LISTS))),
    edits(max_size=3),
    st.sampled_from(BOMBS),
)
def test_loader(
    workdir: Path, target: str, rules_at: int, list_at: int, changes: list[Edit], bomb: int
) -> None:
    texts = {"config": CONFIG, "rules": HOSTILE_RULES[rules_at], "list": HOSTILE_LISTS[list_at]}
    texts[target] = apply(texts[target], changes)
    if bomb:  # one huge value: a line of a megabyte where a short one was
        texts[target] = texts[target].replace(b"10.66.0.0/16", b"10.66.0.0/16" + b"a" * bomb, 1)
    files = write(workdir, texts["config"], texts["rules"], texts["list"])
    check(files)


@pytest.mark.parametrize("rules_at", range(len(HOSTILE_RULES)))
def test_hostile_rule_files(workdir: Path, rules_at: int) -> None:
    """Each hostile rule file as it is: refused with located problems (only the first, the
    valid one, loads), in bounded time and memory."""
    messages = check(write(workdir, CONFIG, HOSTILE_RULES[rules_at], NETWORKS))
    assert bool(messages) == (rules_at != 0)
    if rules_at in (2, 3):  # merge keys: never expanded, so no duplicate keys either
        assert not any("duplicate" in m for m in messages)


@pytest.mark.parametrize("list_at", range(len(HOSTILE_LISTS)))
def test_hostile_network_lists(workdir: Path, list_at: int) -> None:
    assert bool(check(write(workdir, CONFIG, RULES, HOSTILE_LISTS[list_at]))) == (list_at != 0)


def test_huge_files(workdir: Path) -> None:
    """20,000 rules and 100,000 listed networks load; a network of a megabyte, in a rule
    file or a list, is refused with a short message."""
    assert check(write(workdir, CONFIG, HUGE_RULES[0], HUGE_LISTS[0])) == []
    (message,) = check(write(workdir, CONFIG, HUGE_RULES[1], NETWORKS))
    assert message.startswith("bad network '10.66.0.0/166666") and len(message) < 400
    messages = check(write(workdir, CONFIG, RULES, HUGE_LISTS[1]))
    assert len(messages) == 2 and all("bad network" in m for m in messages)


def test_long_runs_of_spaces(workdir: Path) -> None:
    """A megabyte of spaces inside ``hours:`` and ``rate:`` is refused at once: their
    patterns once took quadratic time over such a run (hours of CPU at a reload; the
    suite's timeout is what would catch it again)."""
    spaces = b" " * (1 << 20)
    rules = RULES.replace(b'"Mon-Fri 07:00-19:00"', b'"Mon' + spaces + b'x"')
    (message,) = check(write(workdir, CONFIG, rules, NETWORKS))
    assert message.startswith("bad hours 'Mon ")
    config_text = CONFIG.replace(b'"30/60s"', b'"1/x' + spaces + b'y"')
    (message,) = check(write(workdir, config_text, RULES, NETWORKS))
    assert "bad rate '1/x " in message
