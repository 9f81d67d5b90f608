from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fake_ftp import FakeFtp
from tests.integration.harness import BANNER, Daemon, SilentUpstream, Upstream

BIG = 6 * 1024 * 1024 + 123  # several megabytes, not a multiple of any buffer size


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The FTP upstream's home: a big random file and a small text file."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "big.bin").write_bytes(os.urandom(BIG))
    (home / "hello.txt").write_text("hello from the IBM i\n")
    return home


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Make (not start) a daemon: ``daemon(config_dict, rules_dict)``."""
    made: list[Daemon] = []

    def make(config: dict[str, Any], rules: dict[str, Any]) -> Daemon:
        d = Daemon(tmp_path, config, rules)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeFtp]]:
    """Make scripted FTP upstreams: ``fake(*faults, size=..., trickle=...)``."""
    made: list[FakeFtp] = []

    def make(*faults: str | None, **kw: Any) -> FakeFtp:
        server = FakeFtp(tuple(faults), **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def silent() -> Iterator[Callable[..., SilentUpstream]]:
    """Make upstreams that never read: ``silent(banner)``."""
    made: list[SilentUpstream] = []

    def make(banner: bytes = BANNER) -> SilentUpstream:
        server = SilentUpstream(banner)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
