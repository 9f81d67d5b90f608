"""The config loader: gatekeeper.yaml and rule files → Settings and RulesSpec, or problems."""

from __future__ import annotations

import ipaddress
import os
import random
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeeper.config import (
    default_config_path,
    load,
    load_rules,
    load_settings,
    parse_duration,
    parse_network_list,
)
from gatekeeper.errors import ConfigError, Problem
from gatekeeper.rules.model import Action, BanPolicy, Source
from gatekeeper.settings import HostPort, Mode, Protocol, RejectStyle, Timeouts

EXAMPLE = Path(__file__).parent.parent / "config" / "gatekeeper.yaml"

CONFIG = """\
database: gk.db
rules: [rules.d/*.yaml]
listeners:
  - name: ftp
    protocol: ftp
    listen: "127.0.0.1:0"
    upstream: "127.0.0.1:21"
  - name: telnet
    protocol: telnet
    listen: "127.0.0.1:0"
    upstream: "127.0.0.1:23"
"""


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def setup(tmp_path: Path, config: str = CONFIG, **rules: str) -> Path:
    """Write gk.yaml and rules.d/<name>.yaml files (default: one with ``default: deny``)."""
    for name, text in (rules or {"10": "default: deny\n"}).items():
        write(tmp_path / "rules.d" / f"{name}.yaml", text)
    return write(tmp_path / "gk.yaml", config)


def problems(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def only(found: list[Problem]) -> Problem:
    assert len(found) == 1, found
    return found[0]


# --- the shipped example ---------------------------------------------------------------


def test_shipped_example_loads() -> None:
    settings_, spec = load(EXAMPLE)
    config_dir = EXAMPLE.parent.absolute()
    assert settings_.path == EXAMPLE.absolute()
    assert settings_.database == config_dir.parent / "var" / "gatekeeper.db"
    ftp, telnet = settings_.listeners
    assert (ftp.name, ftp.protocol, ftp.reject) == ("ftp", Protocol.FTP, RejectStyle.REPLY)
    assert ftp.listen == HostPort("127.0.0.1", 2121)
    assert ftp.upstream == HostPort("127.0.0.1", 21)
    assert ftp.passive_ports == (50000, 50099)
    assert (telnet.protocol, telnet.reject) == (Protocol.TELNET, RejectStyle.CLOSE)
    assert telnet.listen == HostPort("127.0.0.1", 2323)
    assert settings_.geoip is None
    assert settings_.retention == 400 * 86400

    rule_file = str(config_dir / "rules.d" / "10-local.yaml")
    drop = str(config_dir / "blocklists" / "example-drop.txt")
    assert spec.default is Action.DENY
    assert spec.default_source is not None and spec.default_source.file == rule_file
    assert spec.files == (rule_file, drop)
    networks = {str(r.network): r for r in spec.rules if r.network is not None}
    assert networks["127.0.0.0/8"].action is Action.ALLOW
    assert networks["::1/128"].action is Action.ALLOW
    vendor = networks["198.51.100.0/24"]
    assert vendor.listeners == frozenset({"ftp"}) and vendor.hours is not None
    assert networks["10.66.0.0/16"].action is Action.DENY
    assert networks["192.0.2.0/24"].source.file == drop
    assert networks["203.0.113.0/24"].action is Action.DENY
    assert spec.ftp.deny_users == ("ADMIN", "ADMINISTRA*", "ROOT", "TEST*", "QSECOFR")
    assert spec.ftp.ban == BanPolicy(after=3, within=600.0, duration=3600.0, ipv6_prefix=64)


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GATEKEEPER_CONFIG", raising=False)
    assert default_config_path() == Path("/etc/gatekeeper/gatekeeper.yaml")
    path = setup(tmp_path)
    monkeypatch.setenv("GATEKEEPER_CONFIG", str(path))
    assert default_config_path() == path
    assert load(default_config_path())[0].path == path


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("400d", 400 * 86400.0),
        ("1h30m", 5400.0),
        ("0.5s", 0.5),
        ("250ms", 0.25),
        (" 2 H ", 7200.0),
        ("45", 45.0),
        (45, 45.0),
        (1.5, 1.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "m", "1h 2", "-5", -1, "nan", "inf", True])
def test_parse_duration_refuses(text: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- the config file -------------------------------------------------------------------


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    s, spec = load(setup(tmp_path))
    assert s.database == tmp_path / "gk.db"
    assert s.rule_globs == (str(tmp_path / "rules.d" / "*.yaml"),)
    assert s.web_listen == HostPort("127.0.0.1", 8020)
    assert s.timeouts == Timeouts()
    assert s.mode is Mode.ENFORCE
    ftp, telnet = s.listeners
    assert ftp.source == Source(str(tmp_path / "gk.yaml"), 4)
    assert telnet.source.line == 8
    assert ftp.listen == HostPort("127.0.0.1", 0)  # port 0: ephemeral, never a clash
    assert (ftp.reject, telnet.reject) == (RejectStyle.REPLY, RejectStyle.CLOSE)
    assert spec.default is Action.DENY
    assert spec.default_source == Source(str(tmp_path / "rules.d" / "10.yaml"), 1)
    assert spec.rules == () and spec.ftp.ban is None


def test_full_listener(tmp_path: Path) -> None:
    config = """\
    database: /var/lib/gatekeeper/gk.db
    geoip: {city: geo/City.mmdb, asn: /srv/ASN.mmdb}
    rules: rules.d/*.yaml
    web: {listen: "[::1]:8080"}
    timeouts: {connect: 5s, idle: 10m}
    retention: 90d
    mode: monitor
    listeners:
      - name: ftp-1
        protocol: FTP
        listen: "[::]:21"
        upstream: "[2001:db8::10]:21"
        reject: reset
        proxy_protocol: [127.0.0.1, "::1"]
        passive_ports: "50000-50099"
        passive_address: 203.0.113.10
        tls: {mode: terminate, certificate: tls/cert.pem, key: /etc/key.pem, upstream: tls}
        limits: {per_address: 10, rate: "30/1m"}
        timeouts: {idle: 1h}
        mode: enforce
        enforce_on_reload: yes
      - {name: t, protocol: tcp, listen: "0.0.0.0:992", upstream: "ibmi.example.com:992"}
    """
    s = load_settings(setup(tmp_path, config))
    assert s.database == Path("/var/lib/gatekeeper/gk.db")
    assert s.geoip is not None
    assert s.geoip.city == tmp_path / "geo" / "City.mmdb"
    assert s.geoip.asn == Path("/srv/ASN.mmdb")
    assert s.web_listen == HostPort("::1", 8080)
    assert s.retention == 90 * 86400 and s.mode is Mode.MONITOR
    assert s.timeouts == Timeouts(connect=5.0, idle=600.0)
    ftp, tcp = s.listeners
    assert ftp.listen == HostPort("::", 21) and str(ftp.listen) == "[::]:21"
    assert ftp.upstream == HostPort("2001:db8::10", 21)
    assert ftp.reject is RejectStyle.RESET
    assert [str(n) for n in ftp.proxy_protocol] == ["127.0.0.1/32", "::1/128"]
    assert ftp.passive_address == "203.0.113.10"
    assert ftp.tls.mode == "terminate" and ftp.tls.upstream == "tls"
    assert ftp.tls.certificate == tmp_path / "tls" / "cert.pem"
    assert ftp.tls.key == Path("/etc/key.pem")
    assert (ftp.limits.per_address, ftp.limits.rate) == (10, (30, 60.0))
    # A listener's timeouts override the global ones key by key.
    assert ftp.timeouts == Timeouts(connect=5.0, idle=3600.0)
    assert tcp.timeouts == s.timeouts
    assert (ftp.mode, tcp.mode) == (Mode.ENFORCE, Mode.MONITOR)  # inherits the global mode
    assert ftp.enforce_on_reload is True and tcp.enforce_on_reload is False
    assert tcp.upstream == HostPort("ibmi.example.com", 992)
    assert tcp.reject is RejectStyle.CLOSE


def test_tls_refuse_as_a_string(tmp_path: Path) -> None:
    config = CONFIG.replace('upstream: "127.0.0.1:21"', 'upstream: "127.0.0.1:21"\n    tls: refuse')
    assert load_settings(setup(tmp_path, config)).listeners[0].tls.mode == "refuse"


def test_login_timeout(tmp_path: Path) -> None:
    """``timeouts.login``: 300 s by default (ProFTPD's TimeoutLogin), fractional seconds,
    global or per FTP listener; on a Telnet listener it is an error naming file and line."""
    s = load_settings(setup(tmp_path))
    assert Timeouts().login == 300.0 and s.listener("ftp").timeouts.login == 300.0
    s = load_settings(setup(tmp_path, CONFIG + "timeouts: {login: 1.5s}\n"))
    assert s.listener("ftp").timeouts.login == 1.5
    text = CONFIG.replace('upstream: "127.0.0.1:21"', 'upstream: "127.0.0.1:21"\n'
                          "    timeouts: {login: 20s}")  # fmt: skip
    assert load_settings(setup(tmp_path, text)).listener("ftp").timeouts.login == 20.0
    for bad, words in [
        (CONFIG + "    timeouts: {login: 20s}\n", "timeouts.login applies to ftp listeners"),
        (CONFIG + "timeouts: {login: 0}\n", "must be more than zero"),
        (CONFIG + "timeouts: {login: soon}\n", "bad duration"),
    ]:
        found = problems(setup(tmp_path, bad))
        assert any(
            p.file == str(tmp_path / "gk.yaml") and p.line == 12 and words in p.message
            for p in found
        ), found


def test_relative_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup(tmp_path / "etc")
    monkeypatch.chdir(tmp_path)
    s = load_settings("etc/gk.yaml")
    assert s.path == tmp_path / "etc" / "gk.yaml"  # absolute: a reload does not depend on cwd
    assert s.database == tmp_path / "etc" / "gk.db"
    assert s.rule_globs == (str(tmp_path / "etc" / "rules.d" / "*.yaml"),)
    assert s.listeners[0].source == Source("etc/gk.yaml", 4)
    write(tmp_path / "etc" / "gk.yaml", CONFIG.replace("gk.db", "''"))
    p = only(problems(Path("etc/gk.yaml")))
    assert (p.file, p.line) == ("etc/gk.yaml", 1)  # reported as the administrator wrote it
    assert p.message == "database: empty value: write a path"


def test_config_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    p = only(problems(path))
    assert (p.file, p.line) == (str(path), None)
    assert "not found" in p.message and "GATEKEEPER_CONFIG" in p.message


def test_unknown_keys(tmp_path: Path) -> None:
    config = CONFIG.replace("rules:", "listner: 1\nrules:").replace(
        '    upstream: "127.0.0.1:23"', '    upstream: "127.0.0.1:23"\n    listn: x'
    )
    found = problems(setup(tmp_path, config))
    assert [(p.line, p.message.split(" (")[0]) for p in found] == [
        (2, "unknown key 'listner'"),
        (13, "listener 'telnet': unknown key 'listn'"),
    ]
    assert "expected one of: database, geoip, rules" in found[0].message
    assert "did you mean 'listeners'?" in found[0].message
    assert "(expected one of: name, protocol, listen, upstream," in found[1].message
    assert "did you mean 'listen'?" in found[1].message


def test_several_config_problems_at_once(tmp_path: Path) -> None:
    config = """\
    database: gk.db
    web: {listen: "127.0.0.1:99999"}
    listeners:
      - name: ftp
        protocol: ftpx
        listen: 0.0.0.0:21
        upstream: "ibmi:0"
        limits: {per_address: 0, rate: "x/10"}
      - name: bad name
        protocol: telnet
        listen: "::1:23"
        upstream: ibmi
        enforce_on_reload: maybe
      - 5
      - protocol: tcp
        listen: "127.0.0.1:1"
    timeouts: {idle: 1x, drain: -3}
    retention: 0
    mode: Sometimes
    """
    found = problems(setup(tmp_path, config))
    got = {(p.line, p.message) for p in found}
    path = str(tmp_path / "gk.yaml")
    assert all(p.file == path for p in found)
    expected = [
        (2, "bad listen address '127.0.0.1:99999': the port must be a number from 0 to 65535"),
        (5, "listener 'ftp': bad protocol 'ftpx' (expected 'ftp', 'telnet' or 'tcp')"),
        (7, "listener 'ftp': bad upstream 'ibmi:0': the port must be a number from 1 to 65535"),
        (8, "listener 'ftp': per_address: must be at least 1, got 0"),
        (9, "listener 'bad name': bad listener name 'bad name': use letters, digits, '-' and "
         "'_' only (e.g. ftp)"),
        (11, "listener 'bad name': bad listen address '::1:23': write an IPv6 address in "
         "brackets, e.g. [::1]:23"),
        (13, "listener 'bad name': enforce_on_reload: expected true or false, got 'maybe'"),
        (14, "listeners: expected a mapping (key: value), got 5"),
        (15, "missing key 'name': give the listener a name, e.g. name: ftp"),
        (15, "missing key 'upstream': write the IBM i's address, "
         'e.g. upstream: "ibmi.example.com:21"'),
        (19, "bad mode 'sometimes' (expected 'enforce' or 'monitor')"),
    ]  # fmt: skip
    for item in expected:
        assert item in got, (item, sorted(got))
    assert any(
        p.line == 8 and p.message.startswith("listener 'ftp': bad rate 'x/10'") for p in found
    )
    assert any(p.line == 12 and "the port is missing" in p.message for p in found)
    assert any(p.line == 17 and p.message.startswith("idle: bad duration '1x'") for p in found)
    assert any(p.line == 17 and "cannot be negative" in p.message for p in found)
    assert any(p.line == 18 and "retention: bad duration 0" in p.message for p in found)
    assert [p.line for p in found] == sorted(p.line or 0 for p in found)


def test_missing_database_and_listeners(tmp_path: Path) -> None:
    found = problems(setup(tmp_path, "rules: [rules.d/*.yaml]\n"))
    assert [(p.line, p.message.split(":")[0]) for p in found] == [
        (1, "missing key 'database'"),
        (1, "missing key 'listeners'"),
    ]
    p = only(problems(setup(tmp_path, "database: x.db\nlisteners: []\n")))
    assert (p.line, p.message) == (2, "listeners: is empty; list at least 1 item")


def test_config_not_a_mapping(tmp_path: Path) -> None:
    p = only(problems(setup(tmp_path, "- database: x\n")))
    assert p.line == 1
    assert p.message.startswith("the file must be a YAML mapping with keys: database, geoip")


def test_listener_cross_checks(tmp_path: Path) -> None:
    config = """\
    database: gk.db
    listeners:
      - {name: ftp, protocol: ftp, listen: "0.0.0.0:21", upstream: "ibmi:21"}
      - name: tn
        protocol: telnet
        listen: 127.0.0.1:21
        upstream: ibmi:23
        reject: reply
        passive_ports: "50000-50010"
        passive_address: 192.0.2.1
      - {name: tn, protocol: tcp, listen: "[::]:992", upstream: "ibmi:992", tls: refuse}
      - {name: loop, protocol: tcp, listen: "[::1]:993", upstream: "[::1]:993"}
      - name: tls
        protocol: ftp
        listen: "[::1]:990"
        upstream: "ibmi:21"
        tls: {mode: terminate, certificate: c.pem}
      - {name: dual, protocol: tcp, listen: "127.0.0.2:992", upstream: "ibmi:992"}
    """
    found = problems(setup(tmp_path, config))
    assert [(p.line, p.message) for p in found] == [
        (6, "listener 'tn': listen 127.0.0.1:21 clashes with listener 'ftp' on 0.0.0.0:21 "
         "(line 3); give each listener its own address or port"),
        (8, "listener 'tn': reject: reply sends an FTP reply and is for ftp listeners only; "
         "write reject: close or reject: reset"),
        (9, "listener 'tn': passive_ports applies to ftp listeners only; remove it "
         "(a telnet listener relays bytes untouched)"),
        (10, "listener 'tn': passive_address applies to ftp listeners only; remove it "
         "(a telnet listener relays bytes untouched)"),
        (11, "listener 'tn': the name is already used by the listener at line 4; "
         "give each listener its own name"),
        (11, "listener 'tn': tls applies to ftp listeners only; remove it "
         "(a tcp listener relays bytes untouched)"),
        (12, "listener 'loop': upstream [::1]:993 is gatekeeper's own listen address, "
         "connections would loop; point it at the IBM i"),
        (17, "listener 'tls': tls mode terminate needs key: the paths of the PEM certificate "
         "and of its private key"),
        (18, "listener 'dual': listen 127.0.0.2:992 clashes with listener 'tn' on [::]:992 "
         "(line 11); give each listener its own address or port"),
    ]  # fmt: skip


def test_bad_tls_and_port_range(tmp_path: Path) -> None:
    config = CONFIG.replace(
        'upstream: "127.0.0.1:21"',
        'upstream: "127.0.0.1:21"\n    tls: yes please\n    passive_ports: "60000-50000"',
    )
    found = problems(setup(tmp_path, config))
    assert [p.line for p in found] == [8, 9]
    assert found[0].message.startswith("listener 'ftp': bad tls 'yes please': write tls: refuse")
    assert 'write "50000-60000"' in found[1].message


# --- YAML itself -----------------------------------------------------------------------


def test_yaml_syntax_error_line(tmp_path: Path) -> None:
    rules = "default: deny\nallow:\n  - 10.0.0.0/8\n  - {network: 1.2.3.0/24\ndeny: []\n"
    p = only(problems(setup(tmp_path, CONFIG, r=rules)))
    assert p.file == str(tmp_path / "rules.d" / "r.yaml")
    assert p.line == 5
    assert p.message.startswith("YAML syntax error: ")


def test_yaml_tab_and_alias_hints(tmp_path: Path) -> None:
    found = problems(
        setup(
            tmp_path,
            CONFIG,
            a="default: deny\nallow:\n\t- 10.0.0.0/8\n",
            b="ftp:\n  deny_users: [*ADM]\n",
        )
    )
    assert [(Path(p.file).name, p.line) for p in found] == [("a.yaml", 3), ("b.yaml", 2)]
    assert "indent with spaces, not tabs" in found[0].message
    assert "quote values that start with *" in found[1].message


def test_duplicate_keys(tmp_path: Path) -> None:
    p = only(problems(setup(tmp_path, CONFIG + "database: other.db\n")))
    assert p.line == 12
    assert p.message.startswith("duplicate key 'database' (first at line 1)")


def test_yaml_12_scalars(tmp_path: Path) -> None:
    """NO is Norway, not false; 10:20 is not the base-60 number 620."""
    config = CONFIG.replace("rules:", "geoip: {city: c.mmdb}\nrules:")
    rules = "deny:\n  - {country: [NO, cn]}\n  - 10:20\n"
    p = only(problems(setup(tmp_path, config, r=rules)))
    assert p.line == 3 and p.message.startswith("bad network '10:20'")
    write(tmp_path / "rules.d" / "r.yaml", "deny:\n  - {country: [NO, cn]}\n  - {country: se}\n")
    _, spec = load(tmp_path / "gk.yaml")
    assert [r.countries for r in spec.rules] == [frozenset({"NO", "CN"}), frozenset({"SE"})]


def test_not_utf8(tmp_path: Path) -> None:
    path = setup(tmp_path)
    write(tmp_path / "rules.d" / "20.yaml", b"allow:\n  - 10.0.0.0/8 # caf\xe9\n")
    p = only(problems(path))
    assert (p.file, p.line) == (str(tmp_path / "rules.d" / "20.yaml"), 2)
    assert "not UTF-8" in p.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_rule_file(tmp_path: Path) -> None:
    path = setup(tmp_path)
    rule = tmp_path / "rules.d" / "10.yaml"
    rule.chmod(0)
    try:
        p = only(problems(path))
    finally:
        rule.chmod(0o644)
    assert p.file == str(rule) and "permission denied" in p.message


# --- rule files ------------------------------------------------------------------------


def test_rule_file_problems_with_lines(tmp_path: Path) -> None:
    rules = """\
    default: maybe
    allow:
      - 10.0.0.1/8
      - {network: 10.0.0.0/33}
      - network: 192.0.2.0/24
        listeners:
          - ftp
          - ftpx
        hours: "Mon-Fry 07:00-19:00"
      - {network: 1.2.3.0/24, file: x.txt}
      - {country: [USA]}
      - {}
      - {network: 1.2.3.0/24, listeners: []}
      - {networks: 1.2.3.0/24}
    privileged: [300.1.1.1]
    ftp:
      deny_users: [ADMIN, "two words"]
      users: {partner: {commands: [retr, XYZZY]}, other: {}}
      ban: {after: "3", within: 10q, ipv6_prefix: 200}
      bans: {}
    """
    found = problems(setup(tmp_path, CONFIG, r=rules))
    file = str(tmp_path / "rules.d" / "r.yaml")
    assert all(p.file == file for p in found)
    got = [(p.line, p.message) for p in found]
    expected = [
        (1, "bad default 'maybe' (expected 'allow' or 'deny')"),
        (3, "bad network '10.0.0.1/8': 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
        (4, "bad network '10.0.0.0/33': '33' is not a valid netmask; write a CIDR such as "
         "10.0.0.0/8 or 2001:db8::/32, or a single address"),
        (9, "hours: unknown day 'Fry' (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)"),
        (10, "allow: a rule needs exactly one of network, file, country (found: network, file); "
         "write one rule per line"),
        (11, "bad country 'USA': write a two-letter ISO 3166 code such as CN or RU"),
        (12, "allow: a rule needs exactly one of network, file, country; write one rule per line"),
        (13, "allow: listeners: [] matches no listener; name some, or remove the key to apply "
         "the rule to every listener"),
        (14, "unknown key 'networks' (expected one of: network, file, country, listeners, hours, "
         "comment); did you mean 'network'?"),
        (15, "privileged: bad network '300.1.1.1': Octet 300 (> 255) not permitted in "
         "'300.1.1.1'; write a CIDR such as 10.0.0.0/8 or 2001:db8::/32, or a single address"),
        (17, "deny_users: bad user name 'two words': write a user profile name such as QSECOFR, "
         "* matches any characters (quote names that start with *)"),
        (18, "commands: bad FTP command 'XYZZY': write a verb such as RETR, LIST or STOR"),
        (18, "missing key 'commands': list the FTP commands this user may send, "
         "e.g. commands: [RETR, LIST]"),
        (19, "after: expected a whole number, got '3' (write the number without quotes)"),
        (19, "within: bad duration '10q': write a number and a unit: 30s, 10m, 1h, 7d "
         "(a bare number is seconds)"),
        (19, "ipv6_prefix: must be at most 128, got 200"),
        (20, "unknown key 'bans' (expected one of: deny_users, users, ban); did you mean 'ban'?"),
    ]  # fmt: skip
    assert sorted(got) == sorted(expected)


def test_unknown_listener_in_rule(tmp_path: Path) -> None:
    rules = """\
    default: deny
    allow:
      - network: 192.0.2.0/24
        listeners:
          - ftp
          - ftpx
      - {network: 198.51.100.0/24, listeners: [telnet, tn]}
    """
    found = problems(setup(tmp_path, CONFIG, r=rules))
    assert [(p.line, p.message) for p in found] == [
        (6, "listener 'ftpx' in 'listeners:' is not defined in gk.yaml (defined: ftp, telnet)"),
        (7, "listener 'tn' in 'listeners:' is not defined in gk.yaml (defined: ftp, telnet)"),
    ]


def test_rules_order_sources_and_fields(tmp_path: Path) -> None:
    rules = """\
    # comment
    deny:
      - 10.66.0.0/16
    default: allow
    allow:
      - 10.0.0.0/8
      - "::1"
      - 2001:db8::/32
      - ::ffff:10.0.0.0/104
      - {network: 192.0.2.7, listeners: ftp, hours: "Mon-Fri 07:00-19:00", comment: 2024}
    privileged: [10.1.1.0/24, 10.1.1.0/24]
    ftp:
      deny_users: [admin, test*]
      users: {partner1: {commands: [retr, LIST]}}
      ban: {for: 2h, ipv6_prefix: 48}
    """
    _, spec = load(setup(tmp_path, CONFIG, r=rules))
    file = str(tmp_path / "rules.d" / "r.yaml")
    assert spec.default is Action.ALLOW and spec.default_source == Source(file, 4)
    assert [(r.action.value, str(r.network), r.source.line) for r in spec.rules] == [
        ("deny", "10.66.0.0/16", 3),
        ("allow", "10.0.0.0/8", 6),
        ("allow", "::1/128", 7),
        ("allow", "2001:db8::/32", 8),
        ("allow", "10.0.0.0/8", 9),  # IPv4-mapped IPv6 is stored as IPv4
        ("allow", "192.0.2.7/32", 10),
    ]
    assert all(r.source.file == file for r in spec.rules)
    last = spec.rules[-1]
    assert last.listeners == frozenset({"ftp"}) and last.comment == "2024"
    assert last.hours is not None and str(last.hours) == "Mon-Fri 07:00-19:00"
    assert [str(n) for n in spec.privileged] == ["10.1.1.0/24"]
    assert spec.ftp.deny_users == ("ADMIN", "TEST*")
    assert spec.ftp.users["PARTNER1"].commands == frozenset({"RETR", "LIST"})
    assert spec.ftp.ban == BanPolicy(after=3, within=600.0, duration=7200.0, ipv6_prefix=48)


def test_empty_sections_and_empty_file(tmp_path: Path) -> None:
    _, spec = load(setup(tmp_path, CONFIG, a="default: deny\nallow:\ndeny:\nftp:\n", b=""))
    assert spec.rules == () and spec.ftp.ban is None
    assert len(spec.files) == 2


def test_country_needs_geoip(tmp_path: Path) -> None:
    p = only(problems(setup(tmp_path, CONFIG, r="deny:\n  - 10.0.0.0/8\n  - {country: CN}\n")))
    assert p.line == 3
    assert p.message.startswith("country rules need a GeoIP database: add geoip:")


# --- several rule files ----------------------------------------------------------------


def test_union_of_several_files(tmp_path: Path) -> None:
    first = """\
    default: deny
    allow: [10.0.0.0/8]
    privileged: [10.1.1.0/24]
    ftp:
      deny_users: [ADMIN]
      users: {P1: {commands: [RETR]}}
      ban: {after: 5}
    """
    second = """\
    allow: [192.0.2.0/24]
    deny: [10.66.0.0/16]
    privileged: [10.2.2.0/24]
    ftp:
      deny_users: [ROOT, admin]
      users: {p1: {commands: [LIST]}, P2: {commands: RETR}}
      ban: {within: 1m}
    """
    # Files are read in name order whatever the order they were written in.
    path = setup(tmp_path, CONFIG, **{"20-b": second, "10-a": first})
    _, spec = load(path)
    a = str(tmp_path / "rules.d" / "10-a.yaml")
    b = str(tmp_path / "rules.d" / "20-b.yaml")
    assert spec.files == (a, b)
    assert [(str(r.network), r.source) for r in spec.rules] == [
        ("10.0.0.0/8", Source(a, 2)),
        ("192.0.2.0/24", Source(b, 1)),
        ("10.66.0.0/16", Source(b, 2)),
    ]
    assert [str(n) for n in spec.privileged] == ["10.1.1.0/24", "10.2.2.0/24"]
    assert spec.ftp.deny_users == ("ADMIN", "ROOT")
    assert spec.ftp.users["P1"].commands == frozenset({"RETR", "LIST"})
    assert spec.ftp.users["P2"].commands == frozenset({"RETR"})
    assert spec.ftp.ban == BanPolicy(after=5, within=60.0)


def test_default_in_two_files(tmp_path: Path) -> None:
    path = setup(tmp_path, CONFIG, a="default: deny\n", b="# allow by default\ndefault: allow\n")
    p = only(problems(path))
    a = tmp_path / "rules.d" / "a.yaml"
    assert (p.file, p.line) == (str(tmp_path / "rules.d" / "b.yaml"), 2)
    assert p.message.startswith(f"'default' is already set in {a}:1; set it in one rule file only")


def test_scalar_in_two_files(tmp_path: Path) -> None:
    path = setup(
        tmp_path,
        CONFIG,
        a="default: deny\nftp:\n  ban: {after: 3}\n",
        b="ftp:\n  ban:\n    within: 5m\n    after: 3\n",
    )
    p = only(problems(path))
    assert (p.file, p.line) == (str(tmp_path / "rules.d" / "b.yaml"), 4)
    assert f"'ftp.ban.after' is already set in {tmp_path / 'rules.d' / 'a.yaml'}:3" in p.message


def test_no_default_anywhere_is_deny(tmp_path: Path) -> None:
    _, spec = load(setup(tmp_path, CONFIG, a="allow: [10.0.0.0/8]\n"))
    assert spec.default is Action.DENY and spec.default_source is None


def test_globs_and_named_files(tmp_path: Path) -> None:
    config = CONFIG.replace(
        "rules: [rules.d/*.yaml]",
        f"rules:\n  - rules.d/*.yaml\n  - nothing/*.yaml\n  - {tmp_path}/abs.yaml\n"
        "  - rules.d/10.yaml",
    )
    write(tmp_path / "abs.yaml", "allow: [10.0.0.0/8]\n")
    _, spec = load(setup(tmp_path, config))
    # a glob that matches nothing is fine when another matched; a file matched twice is read once
    assert spec.files == (str(tmp_path / "rules.d" / "10.yaml"), str(tmp_path / "abs.yaml"))
    (tmp_path / "abs.yaml").unlink()
    p = only(problems(tmp_path / "gk.yaml"))
    assert (p.file, p.line) == (str(tmp_path / "gk.yaml"), 5)
    assert p.message == (
        f"rule file {tmp_path}/abs.yaml not found (rules: '{tmp_path}/abs.yaml'); "
        "create it or fix the path"
    )


def test_no_rule_file_at_all(tmp_path: Path) -> None:
    config = CONFIG.replace("rules: [rules.d/*.yaml]", "rules:\n  - rules.d/*.yaml\n  - x/*.yml")
    (tmp_path / "rules.d").mkdir()
    path = write(tmp_path / "gk.yaml", config)
    p = only(problems(path))
    assert (p.file, p.line) == (str(path), 2)
    assert p.message == (
        "no rule file matches rules: [rules.d/*.yaml, x/*.yml]; "
        "write at least one with a 'default:' line"
    )
    # load_rules on its own reports the same line (it re-reads the config for it)
    settings_ = load_settings(path)
    with pytest.raises(ConfigError) as info:
        load_rules(settings_)
    assert info.value.problems == [p]


def test_folder_named_in_rules(tmp_path: Path) -> None:
    path = setup(tmp_path, CONFIG.replace("rules: [rules.d/*.yaml]", "rules: rules.d"))
    p = only(problems(path))
    assert p.line == 2 and "write rules.d/*.yaml" in p.message


def test_load_rules_after_load_settings(tmp_path: Path) -> None:
    path = setup(tmp_path, CONFIG, r="default: allow\n")
    spec = load_rules(load_settings(path))
    assert spec.default is Action.ALLOW


def test_config_and_rule_problems_together(tmp_path: Path) -> None:
    config = CONFIG.replace("database: gk.db", "database: gk.db\nretention: forever")
    rules = "default: deny\nallow:\n  - {network: 10.0.0.0/8, listeners: [ftp, nope]}\n"
    found = problems(setup(tmp_path, config, r=rules))
    assert [(Path(p.file).name, p.line) for p in found] == [("gk.yaml", 2), ("r.yaml", 3)]


# --- network list files ----------------------------------------------------------------


def test_file_entries(tmp_path: Path) -> None:
    write(
        tmp_path / "lists" / "drop.txt",
        """\
        ; Spamhaus DROP List
        ; Last-Modified: today

        1.10.16.0/20 ; SBL256894
          2.56.192.0/22;SBL459831
        # FireHOL style
        203.0.113.0/24 # comment
        2001:db8::/32
        198.51.100.7
        """,
    )
    rules = """\
    default: deny
    deny:
      - 10.66.0.0/16
      - {file: ../../lists/drop.txt, listeners: [ftp], hours: "Sat-Sun", comment: drop}
      - 10.67.0.0/16
    """
    # the rule file lives in a sub-folder: its file: path is relative to it, not to gk.yaml
    write(tmp_path / "rules.d" / "sub" / "r.yaml", rules)
    path = write(tmp_path / "gk.yaml", CONFIG.replace("rules.d/*.yaml", "rules.d/**/*.yaml"))
    _, spec = load(path)
    rule_file = str(tmp_path / "rules.d" / "sub" / "r.yaml")
    drop = str(tmp_path / "lists" / "drop.txt")
    assert spec.files == (rule_file, drop)
    assert [(str(r.network), r.source) for r in spec.rules] == [
        ("10.66.0.0/16", Source(rule_file, 3)),
        ("1.10.16.0/20", Source(drop, 4)),
        ("2.56.192.0/22", Source(drop, 5)),
        ("203.0.113.0/24", Source(drop, 7)),
        ("2001:db8::/32", Source(drop, 8)),
        ("198.51.100.7/32", Source(drop, 9)),
        ("10.67.0.0/16", Source(rule_file, 5)),
    ]
    for rule in spec.rules[1:-1]:
        assert rule.action is Action.DENY and rule.comment == "drop"
        assert rule.listeners == frozenset({"ftp"}) and str(rule.hours) == "Sat-Sun"


def test_file_entry_problems(tmp_path: Path) -> None:
    write(tmp_path / "bad.txt", "10.0.0.0/8\n\n10.0.0.1/8 ; typo\nfoo\n1.2.3.4-1.2.3.9\n")
    rules = """\
    default: deny
    deny:
      - {file: ../bad.txt}
      - {file: ../missing.txt}
    allow:
      - {file: ../bad.txt, listeners: [telnet]}
    """
    found = problems(setup(tmp_path, CONFIG, r=rules))
    bad = str(tmp_path / "bad.txt")
    rule_file = str(tmp_path / "rules.d" / "r.yaml")
    # bad.txt is read once though named twice, so its problems are reported once
    found.sort(key=lambda p: (p.file != rule_file, p.line or 0))
    assert [(p.file, p.line) for p in found] == [(rule_file, 4), (bad, 3), (bad, 4), (bad, 5)]
    assert found[0].message == (
        f"network list {tmp_path}/missing.txt not found; create it (it may be empty) "
        "or fix the path"
    )
    assert found[1].message.endswith("has host bits set; did you mean 10.0.0.0/8?")
    assert found[2].message.startswith("bad network 'foo'")
    assert "address ranges are not supported" in found[3].message


def test_many_bad_lines_are_summarised(tmp_path: Path) -> None:
    write(tmp_path / "junk.txt", "".join(f"junk{i}\n" for i in range(500)))
    found = problems(setup(tmp_path, CONFIG, r="deny: [{file: ../junk.txt}]\n"))
    assert len(found) == 21
    assert (found[-1].line, found[-1].message.split(" (")[0]) == (
        21,
        "... and 480 more bad lines from here on",
    )


def test_parse_network_list_basics() -> None:
    text = "# head\n\n 192.0.2.0/24 ; SBL1\r\n2001:DB8::/32#x\n010.0.0.0/8\n10.0.0.0/08\n"
    networks, found = parse_network_list(text, "f")
    assert [(str(n), line) for n, line in networks] == [
        ("192.0.2.0/24", 3),
        ("2001:db8::/32", 4),
        ("10.0.0.0/8", 6),
    ]
    assert [(p.file, p.line) for p in found] == [("f", 5)]
    assert "Leading zeros" in found[0].message


def test_parse_network_list_of_a_hundred_thousand_lines() -> None:
    """A DROP-sized list: every network, in order, as ipaddress reads it (the speed is
    measured in benchmarks/bench_rules.py, never asserted here)."""
    rng = random.Random(7)
    lines = ["; Spamhaus DROP List"]
    for i in range(100_000):
        prefix = rng.randint(8, 32)
        base = rng.getrandbits(32) >> (32 - prefix) << (32 - prefix)
        lines.append(f"{ipaddress.IPv4Network((base, prefix))} ; SBL{i}")
    networks, found = parse_network_list("\n".join(lines), "drop.txt")
    assert not found
    expected = [ipaddress.ip_network(x.split(";")[0].strip()) for x in lines[1:]]
    assert [net for net, _ in networks] == expected
    assert [line for _, line in networks] == list(range(2, 100_002))


# --- property tests --------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.text(alphabet="0123456789abcdefABCDEF.:/%;# \t\r\n-x")))
def test_parse_network_list_never_raises(text: str) -> None:
    networks, found = parse_network_list(text, "f")
    lines = text.split("\n")
    for network, line in networks:
        assert 1 <= line <= len(lines)
        assert isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network)
    for problem in found:
        assert problem.file == "f" and problem.line is not None and 1 <= problem.line <= len(lines)


_octet = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "255", "256"]))
_dotted = st.builds(
    lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}{p}",
    _octet,
    _octet,
    _octet,
    _octet,
    st.one_of(st.just(""), st.integers(0, 40).map(lambda n: f"/{n}"), st.just("/08")),
)


@settings(max_examples=500, deadline=None)
@given(_dotted, st.sampled_from(["", " ; SBL1", "  # c", "\t"]))
def test_parse_network_list_agrees_with_ipaddress_on_dotted_quads(text: str, tail: str) -> None:
    try:
        expected = ipaddress.ip_network(text)
    except ValueError:
        expected = None
    networks, found = parse_network_list(text + tail, "f")
    if expected is None:
        assert networks == [] and len(found) == 1 and found[0].line == 1
    else:
        assert networks == [(expected, 1)] and found == []


@st.composite
def _networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if draw(st.booleans()):
        prefix = draw(st.integers(0, 32))
        bits = draw(st.integers(0, 2**32 - 1)) >> (32 - prefix) << (32 - prefix) if prefix else 0
        return ipaddress.IPv4Network((bits, prefix))
    prefix = draw(st.integers(0, 128))
    bits = draw(st.integers(0, 2**128 - 1)) >> (128 - prefix) << (128 - prefix) if prefix else 0
    return ipaddress.IPv6Network((bits, prefix))


@settings(max_examples=300, deadline=None)
@given(st.lists(_networks(), max_size=20), st.booleans())
def test_parse_network_list_agrees_with_ipaddress(
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], bare: bool
) -> None:
    lines = []
    for n in networks:
        full = n.prefixlen == n.max_prefixlen
        lines.append(str(n.network_address) if bare and full else str(n))
        lines.append("; comment")
    parsed, found = parse_network_list("\n".join(lines), "f")
    assert found == []
    expected = []
    for i, n in enumerate(networks):
        mapped = isinstance(n, ipaddress.IPv6Network) and n.network_address.ipv4_mapped
        if mapped and n.prefixlen >= 96:  # stored as the IPv4 network it means
            n = ipaddress.IPv4Network(f"{mapped}/{n.prefixlen - 96}")
        expected.append((n, 2 * i + 1))
    assert parsed == expected
