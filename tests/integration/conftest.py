from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Daemon, Upstream


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
