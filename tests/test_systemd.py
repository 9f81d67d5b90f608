"""systemd: sd_notify and the watchdog on a real datagram socket, socket activation on real
listening sockets, and the units in systemd/ through systemd-analyze (verify, security)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatekeeper import systemd
from gatekeeper.rules.model import Source
from gatekeeper.settings import HostPort, ListenerSettings, Protocol, RejectStyle, Timeouts

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
SERVICES = ("gatekeeper@.service", "gatekeeper-web.service")
MAX_EXPOSURE = 2.0  # systemd-analyze security: "OK" or better


# -- sd_notify ------------------------------------------------------------------------------
@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket playing systemd, named in NOTIFY_SOCKET."""
    folder = tempfile.mkdtemp(prefix="gk")  # short: AF_UNIX paths are limited
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"{folder}/notify")
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", f"{folder}/notify")
    yield sock
    sock.close()
    shutil.rmtree(folder)


def test_notify_sends_one_datagram(manager: socket.socket) -> None:
    assert systemd.notify("READY=1", "STATUS=listening: ftp=0.0.0.0:21")
    assert manager.recv(4096) == b"READY=1\nSTATUS=listening: ftp=0.0.0.0:21"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"gatekeeper-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")


def test_notify_to_a_missing_socket_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="gatekeeper.systemd"):
        assert not systemd.notify("READY=1")
    assert "cannot notify systemd" in caplog.text


def test_reloading_carries_the_monotonic_time(manager: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = dict(line.split("=", 1) for line in manager.recv(4096).decode().splitlines())
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


# -- watchdog -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "period"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # WatchdogSec=30s: a ping every 15 s
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_period(environ: dict[str, str], period: float | None) -> None:
    assert systemd.watchdog_period(environ, pid=4242) == period


def test_watchdog_period_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_period() == 1.0


def test_keep_alive_pings_until_cancelled(manager: socket.socket) -> None:
    manager.setblocking(False)

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(systemd.keep_alive(0.01))
        try:
            async with asyncio.timeout(5):
                return [await loop.sock_recv(manager, 4096) for _ in range(3)]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert asyncio.run(main()) == [b"WATCHDOG=1"] * 3


# -- socket activation ----------------------------------------------------------------------
def _listening(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


def _free_fds(count: int) -> int:
    """The first of ``count`` consecutive descriptors that are not open (systemd's 3, 4…
    are taken in a test process)."""
    for first in range(500, 1000, 16):
        if all(_closed(fd) for fd in range(first, first + count)):
            return first
    raise AssertionError("no free descriptors")


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


def _pass(*sockets: socket.socket) -> int:
    """Put ``sockets`` on consecutive descriptors, as systemd does from 3 on; the objects
    given are closed (the descriptors now belong to the code under test)."""
    first = _free_fds(len(sockets))
    for offset, sock in enumerate(sockets):
        os.dup2(sock.fileno(), first + offset, inheritable=True)
        sock.close()
    return first


def _environ(count: int, names: str | None = None, pid: int | None = None) -> dict[str, str]:
    env = {"LISTEN_PID": str(os.getpid() if pid is None else pid), "LISTEN_FDS": str(count)}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return env


def test_listen_sockets_adopts_named_sockets() -> None:
    a, b = _listening(), _listening("::1")
    ports = [a.getsockname()[1], b.getsockname()[1]]
    first = _pass(a, b)
    env = {**_environ(2, "ftp:telnet"), "PATH": "/bin"}
    passed = systemd.listen_sockets(env, first=first)
    try:
        assert [(p.name, p.port) for p in passed] == [("ftp", ports[0]), ("telnet", ports[1])]
        assert env == {"PATH": "/bin"}  # LISTEN_* are gone: no child takes them for its own
        assert passed[1].address == f"[::1]:{ports[1]}"
        for item in passed:
            assert not item.sock.get_inheritable()
            assert item.sock.gettimeout() == 0.0  # non-blocking, ready for the event loop
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=5):
            conn, _ = passed[0].sock.accept()  # the very socket: a queued connection is there
            conn.close()
    finally:
        for item in passed:
            item.sock.close()


def test_listen_sockets_without_names_are_unknown() -> None:
    first = _pass(_listening())
    passed = systemd.listen_sockets(_environ(1), first=first)
    assert [p.name for p in passed] == ["unknown"]
    passed[0].sock.close()


def test_listen_sockets_too_few_names(caplog: pytest.LogCaptureFixture) -> None:
    first = _pass(_listening(), _listening())
    passed = systemd.listen_sockets(_environ(2, "ftp"), first=first)
    assert [p.name for p in passed] == ["ftp", "unknown"]
    assert "has 1 names for 2 sockets" in caplog.text
    for item in passed:
        item.sock.close()


def test_listen_sockets_meant_for_another_process() -> None:
    first = _pass(_listening())
    env = _environ(1, "ftp", pid=os.getpid() + 1)
    try:
        assert systemd.listen_sockets(env, first=first) == []
        assert env == {}
        assert not _closed(first)  # not ours: left alone
    finally:
        os.close(first)


@pytest.mark.parametrize("environ", [{}, {"LISTEN_FDS": "1"}, {"LISTEN_PID": "1"}])
def test_listen_sockets_without_activation(environ: dict[str, str]) -> None:
    assert systemd.listen_sockets(dict(environ)) == []


def test_listen_sockets_bad_count(caplog: pytest.LogCaptureFixture) -> None:
    assert systemd.listen_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}) == []
    assert "not a number" in caplog.text


def test_listen_sockets_closes_what_is_no_listening_tcp_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unconnected = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # never listened
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(f"\0gatekeeper-test-{uuid.uuid4().hex}")
    unix.listen()
    read, write = os.pipe()
    good = _listening()
    first = _free_fds(5)
    for offset, fd in enumerate([udp.fileno(), unconnected.fileno(), unix.fileno(), read]):
        os.dup2(fd, first + offset)
    os.dup2(good.fileno(), first + 4)
    for sock in (udp, unconnected, unix, good):
        sock.close()
    os.close(read)
    os.close(write)
    passed = systemd.listen_sockets(_environ(5, "udp:unconnected:unix:pipe:ok"), first=first)
    assert [p.name for p in passed] == ["ok"]
    assert all(_closed(fd) for fd in range(first, first + 4))
    assert "'udp'" in caplog.text
    assert "'pipe'" in caplog.text
    passed[0].sock.close()


def _listener(name: str, listen: str) -> ListenerSettings:
    host, _, port = listen.rpartition(":")
    return ListenerSettings(
        name=name,
        protocol=Protocol.TCP,
        listen=HostPort(host.strip("[]"), int(port)),
        upstream=HostPort("192.0.2.1", 23),
        reject=RejectStyle.CLOSE,
        source=Source("gatekeeper.yaml", 1),
    )


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _passed(made: list[socket.socket], name: str, host: str = "127.0.0.1") -> systemd.PassedSocket:
    sock = _listening(host)
    made.append(sock)
    return systemd.PassedSocket(name, sock)


def test_assign_by_name(sockets: list[socket.socket]) -> None:
    ftp, telnet = _passed(sockets, "ftp"), _passed(sockets, "telnet")
    listeners = [_listener("telnet", "0.0.0.0:23"), _listener("ftp", "0.0.0.0:21")]
    taken, unmatched = systemd.assign([ftp, telnet], listeners)
    assert taken == {"ftp": ftp, "telnet": telnet}
    assert unmatched == []


def test_assign_by_port_when_the_name_is_no_listener(sockets: list[socket.socket]) -> None:
    # One socket unit, two ports: systemd gives both sockets the same name.
    a, b = _passed(sockets, "gatekeeper"), _passed(sockets, "gatekeeper")
    listeners = [_listener("ftp", f"0.0.0.0:{a.port}"), _listener("telnet", f"[::]:{b.port}")]
    taken, unmatched = systemd.assign([b, a], listeners)
    assert taken == {"ftp": a, "telnet": b}
    assert unmatched == []


def test_assign_by_port_and_host(sockets: list[socket.socket]) -> None:
    a = _passed(sockets, "unknown")
    listeners = [
        _listener("outside", f"192.0.2.10:{a.port}"),
        _listener("inside", f"127.0.0.1:{a.port}"),
    ]
    assert systemd.assign([a], listeners) == ({"inside": a}, [])


def test_assign_leaves_ambiguous_and_unknown_sockets(sockets: list[socket.socket]) -> None:
    a = _passed(sockets, "unknown")
    stray = _passed(sockets, "stray")
    listeners = [_listener("one", f"192.0.2.10:{a.port}"), _listener("two", f"192.0.2.11:{a.port}")]
    assert systemd.assign([a, stray], listeners) == ({}, [a, stray])


def test_assign_one_socket_per_listener(sockets: list[socket.socket]) -> None:
    other, own = _passed(sockets, "ftp"), _passed(sockets, "ftp")
    ftp = _listener("ftp", f"0.0.0.0:{own.port}")
    taken, unmatched = systemd.assign([other, own], [ftp])
    assert taken == {"ftp": own}  # of two named ftp, the one on the listener's port
    assert unmatched == [other]


# -- the units ------------------------------------------------------------------------------
def _units(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}} (systemd's own syntax is simple)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)(ms|s|min|m|h)?", value)
    assert match, value
    return int(match[1]) * units[match[2] or "s"]


def test_service_unit_contract() -> None:
    unit = _units(UNITS / "gatekeeper@.service")["Service"]
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == ["/opt/gatekeeper/bin/gatekeeper run -c /etc/gatekeeper/%i.yaml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Sockets"] == ["gatekeeper@%i.socket"]
    assert unit["CapabilityBoundingSet"] == [""]  # socket activated: no capability at all
    assert unit["StateDirectory"] == ["gatekeeper"]
    assert _seconds(unit["WatchdogSec"][0]) >= 10
    # A stop drains sessions for timeouts.drain first: systemd must not kill it before.
    assert _seconds(unit["TimeoutStopSec"][0]) > Timeouts().drain + 10


def test_services_run_as_an_unprivileged_system_user() -> None:
    """The daemon and the pages run as the system user gatekeeper.sysusers creates, with
    no capability and no way to gain one; ports below 1024 come from the socket unit,
    opened by systemd. Only the documented variant without socket activation gets one
    capability, CAP_NET_BIND_SERVICE, and nothing else."""
    (declared,) = [
        line.split()
        for line in (UNITS / "gatekeeper.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kind, name, uid = declared[:3]
    assert (kind, uid) == ("u", "-")  # a system user; systemd-sysusers picks its id
    for service in SERVICES:
        unit = _units(UNITS / service)["Service"]
        assert unit["User"] == [name] and unit["Group"] == [name], service
        assert name != "root" and "DynamicUser" not in unit and "SupplementaryGroups" not in unit
        assert unit["CapabilityBoundingSet"] == [""] and unit["AmbientCapabilities"] == [""]
        assert unit["NoNewPrivileges"] == ["yes"] and unit["PrivateUsers"] == ["yes"]
        assert unit["RestrictSUIDSGID"] == ["yes"] and "PermissionsStartOnly" not in unit
        # "+" and "!" would run a command with full privileges or as root.
        commands = [v for k, vs in unit.items() if k.startswith("Exec") for v in vs]
        assert commands and not [c for c in commands if c.startswith(("+", "!", "-+", "-!"))]
    socket_unit = _units(UNITS / "gatekeeper@.socket")["Socket"]
    assert [int(port) for port in socket_unit["ListenStream"]] == [21, 23]  # below 1024
    assert "SocketUser" not in socket_unit  # systemd (root) opens them
    bind = _units(UNITS / "bind-low-ports.conf")
    assert bind == {"Service": {"CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
                                "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
                                "PrivateUsers": ["no"]}}  # fmt: skip


def test_socket_units_match_listener_names() -> None:
    socket_unit = _units(UNITS / "gatekeeper@.socket")
    assert socket_unit["Socket"]["ListenStream"] == ["21", "23"]
    assert socket_unit["Socket"]["FileDescriptorName"] == ["%i"]
    assert socket_unit["Socket"]["Service"] == ["gatekeeper@%i.service"]
    for name, port in (("ftp", "21"), ("telnet", "23")):
        dropin = _units(UNITS / f"gatekeeper@{name}.socket.d" / "listen.conf")
        assert dropin["Socket"]["ListenStream"] == ["", port]  # reset, then the one port


def test_office_hours_calendar_in_the_timers() -> None:
    stop = _units(UNITS / "gatekeeper-stop@.timer")["Timer"]
    start = _units(UNITS / "gatekeeper-start@.timer")["Timer"]
    assert stop["OnCalendar"] == ["Mon..Fri 19:00"]
    assert start["OnCalendar"] == ["Mon..Fri 07:00"]
    stop_service = _units(UNITS / "gatekeeper-stop@.service")["Service"]
    start_service = _units(UNITS / "gatekeeper-start@.service")["Service"]
    assert stop_service["ExecStart"] == [
        "/bin/systemctl stop gatekeeper@%i.socket gatekeeper@%i.service"
    ]
    assert start_service["ExecStart"] == ["/bin/systemctl start gatekeeper@%i.service"]


# -- systemd-analyze ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def analyzer() -> str:
    """systemd-analyze; `make test` installs it (Debian's systemd package) when missing."""
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: `make systemd-analyze` installs it")
        pytest.skip("systemd-analyze is not installed (make systemd-analyze)")
    return path


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The units as `make install` writes them for a PREFIX in ``tmp_path`` (verify checks
    that ExecStart= exists)."""
    prefix = tmp_path / "opt" / "gatekeeper"
    (prefix / "bin").mkdir(parents=True)
    program = prefix / "bin" / "gatekeeper"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    units = tmp_path / "units"
    for source in UNITS.rglob("*"):
        target = units / source.relative_to(UNITS)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text().replace("/opt/gatekeeper", str(prefix)))
    return units


def _analyze(analyzer: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyzer, "--no-pager", *args], capture_output=True, text=True, timeout=60
    )


def test_units_verify(analyzer: str, unit_dir: Path) -> None:
    instances = [
        "gatekeeper@ftp.service", "gatekeeper@ftp.socket", "gatekeeper@telnet.socket",
        "gatekeeper@gatekeeper.service", "gatekeeper@gatekeeper.socket",
        "gatekeeper-web.service",
        "gatekeeper-stop@ftp.timer", "gatekeeper-stop@ftp.service",
        "gatekeeper-start@ftp.timer", "gatekeeper-start@ftp.service",
    ]  # fmt: skip
    result = _analyze(analyzer, "verify", *(str(unit_dir / name) for name in instances))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def _exposure(analyzer: str, unit: Path) -> float:
    result = _analyze(analyzer, "security", "--offline=yes", str(unit))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    return float(match[1])


@pytest.mark.parametrize("service", SERVICES)
def test_service_security_exposure(analyzer: str, unit_dir: Path, service: str) -> None:
    name = service.replace("@.", "@ftp.")
    exposure = _exposure(analyzer, unit_dir / name)
    assert exposure <= MAX_EXPOSURE, f"{service}: exposure {exposure} (OK is {MAX_EXPOSURE})"


# What systemd-analyze security must see as passed (✓) for the services to be unprivileged.
UNPRIVILEGED_CHECKS = (
    "User=/DynamicUser=",
    "NoNewPrivileges=",
    "AmbientCapabilities=",
    "SupplementaryGroups=",
    "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",
    "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)",
    "CapabilityBoundingSet=~CAP_SYS_ADMIN",
    "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
)


@pytest.mark.parametrize("service", SERVICES)
def test_security_rates_the_services_unprivileged(
    analyzer: str, unit_dir: Path, service: str
) -> None:
    name = service.replace("@.", "@ftp.")
    result = _analyze(analyzer, "security", "--offline=yes", str(unit_dir / name))
    assert result.returncode == 0, result.stderr
    verdicts = {}
    for line in result.stdout.splitlines():
        mark, _, rest = line.strip().partition(" ")
        if mark in ("✓", "✗") and rest:
            verdicts[rest.split()[0]] = mark
    assert {check: verdicts.get(check) for check in UNPRIVILEGED_CHECKS} == dict.fromkeys(
        UNPRIVILEGED_CHECKS, "✓"
    )
    print(f"\n{name}: {sum(v == '✓' for v in verdicts.values())} of {len(verdicts)} checks "
          f"passed, the {len(UNPRIVILEGED_CHECKS)} about privilege all of them")  # fmt: skip


def test_without_socket_activation_still_ok(analyzer: str, unit_dir: Path) -> None:
    """The documented alternative: the service binds 21/23 itself with one capability."""
    text = (unit_dir / "gatekeeper@.service").read_text()
    text = text.replace("Sockets=gatekeeper@%i.socket\n", "")
    extra = (unit_dir / "bind-low-ports.conf").read_text().split("[Service]\n", 1)[1]
    text = text.replace("\n[Install]", f"{extra}\n[Install]")
    unit = unit_dir / "gatekeeper-bind@.service"
    unit.write_text(text)
    assert _units(unit)["Service"]["CapabilityBoundingSet"][-1] == "CAP_NET_BIND_SERVICE"
    assert (
        _analyze(analyzer, "verify", str(unit_dir / "gatekeeper-bind@ftp.service")).returncode == 0
    )
    assert _exposure(analyzer, unit_dir / "gatekeeper-bind@ftp.service") <= MAX_EXPOSURE


def test_calendars_parse(analyzer: str) -> None:
    for timer in ("gatekeeper-stop@.timer", "gatekeeper-start@.timer"):
        (calendar,) = _units(UNITS / timer)["Timer"]["OnCalendar"]
        result = _analyze(analyzer, "calendar", "--iterations=5", calendar)
        assert result.returncode == 0, result.stderr
        days = re.findall(r"(?:Next elapse|Iter\. #\d+): (\w{3}) ", result.stdout)
        assert len(days) == 5
        assert not {"Sat", "Sun"} & set(days)


def test_sysusers_declares_the_user(analyzer: str, tmp_path: Path) -> None:
    sysusers = Path(analyzer).with_name("systemd-sysusers")
    if not sysusers.exists():
        found = shutil.which("systemd-sysusers")
        assert found, "systemd-sysusers comes with systemd-analyze"
        sysusers = Path(found)
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [str(sysusers), f"--root={tmp_path}", str(UNITS / "gatekeeper.sysusers")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (user,) = (tmp_path / "etc" / "passwd").read_text().splitlines()
    name, _, uid, gid, _, home, shell = user.split(":")
    assert (name, home, shell) == ("gatekeeper", "/var/lib/gatekeeper", "/usr/sbin/nologin")
    assert 0 < int(uid) < 1000 and int(gid) > 0  # a system user
