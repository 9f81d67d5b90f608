"""`make install` for real, into temporary roots: a virtualenv with gatekeeper in it, the
units, the example configuration, and an administrator's edits kept on a second install.

Each install creates a virtualenv and installs the package and its dependencies with pip
(from its cache when warm: about 20 s), hence the slow mark; `make test` runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gatekeeper import __version__

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CONFIG_FILES = [
    "gatekeeper.yaml", "ftp.yaml", "telnet.yaml", "rules.d/10-local.yaml",
    "ftp.d/20-vendor.yaml", "blocklists/example-drop.txt",
]  # fmt: skip
UNIT_FILES = [
    "gatekeeper@.service", "gatekeeper@.socket", "gatekeeper-web.service",
    "gatekeeper-stop@.timer", "gatekeeper-stop@.service",
    "gatekeeper-start@.timer", "gatekeeper-start@.service",
    "gatekeeper@ftp.socket.d/listen.conf", "gatekeeper@telnet.socket.d/listen.conf",
]  # fmt: skip


def make_install(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    for name in ("DESTDIR", "PREFIX", "CONFDIR", "UNITDIR", "SYSUSERSDIR", "SYSTEM_SETUP"):
        env.pop(name, None)
    args = [f"{k}={v}" for k, v in variables.items()]
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "install", *args],
        capture_output=True, text=True, env=env, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_install_into_destdir_keeps_the_administrators_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    had_build = (REPO / "build").exists()
    out = make_install(DESTDIR=str(root)).stdout

    venv = root / "opt" / "gatekeeper"
    conf = root / "etc" / "gatekeeper"
    units = root / "etc" / "systemd" / "system"
    for rel in CONFIG_FILES:
        assert (conf / rel).is_file(), rel
        assert f"installed {conf / rel}" in out
    for rel in UNIT_FILES:
        assert (units / rel).is_file(), rel
    assert (root / "etc" / "sysusers.d" / "gatekeeper.conf").is_file()
    assert (venv / "share" / "doc" / "gatekeeper" / "README.md").is_file()
    # StateDirectory= creates /var/lib/gatekeeper at service start; the install does not.
    assert not (root / "var").exists()
    assert (REPO / "build").exists() == had_build  # built from a copy of the sources

    # The virtualenv works from PREFIX, not from the staging root.
    script = venv / "bin" / "gatekeeper"
    assert script.read_text().splitlines()[0] == "#!/opt/gatekeeper/bin/python"
    assert str(root) not in (venv / "bin" / "activate").read_text()
    assert str(root) not in (venv / "pyvenv.cfg").read_text()
    python = str(venv / "bin" / "python")
    version = subprocess.run([python, str(script), "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"gatekeeper {__version__}", version.stderr
    # Not an editable install: the package lives in the virtualenv.
    where = subprocess.run(
        [python, "-c", "import gatekeeper; print(gatekeeper.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.startswith(str(venv / "lib"))
    for name in ("gatekeeper.yaml", "ftp.yaml", "telnet.yaml"):
        check = subprocess.run(
            [python, str(script), "check", "-c", str(conf / name)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr

    # The administrator edits; a second install keeps every edit and says so.
    edited = {
        conf / "ftp.yaml": (conf / "ftp.yaml").read_text() + "# tuned by the admin\n",
        conf / "rules.d" / "10-local.yaml": "default: allow\n",
        units / "gatekeeper@ftp.socket.d" / "listen.conf": "[Socket]\nListenStream=2121\n",
    }
    for path, text in edited.items():
        path.write_text(text)
    (units / "gatekeeper@.service").write_text("broken\n")  # ours: replaced
    out = make_install(DESTDIR=str(root)).stdout
    for path, text in edited.items():
        assert path.read_text() == text
        assert f"kept {path}" in out
    shipped = (REPO / "systemd" / "gatekeeper@.service").read_text()
    assert (units / "gatekeeper@.service").read_text() == shipped
    assert (venv / "share" / "gatekeeper" / "examples" / "ftp.yaml").read_text() == (
        REPO / "config" / "etc" / "ftp.yaml"
    ).read_text()


def test_install_elsewhere_runs_and_its_units_verify(tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "gk"
    conf = tmp_path / "etc" / "gk"
    units = tmp_path / "units"
    make_install(
        PREFIX=str(prefix), CONFDIR=str(conf), UNITDIR=str(units),
        SYSUSERSDIR=str(tmp_path / "sysusers"), SYSTEM_SETUP="no",
    )  # fmt: skip
    version = subprocess.run(
        [str(prefix / "bin" / "gatekeeper"), "--version"], capture_output=True, text=True
    )
    assert version.stdout.strip() == f"gatekeeper {__version__}", version.stderr
    service = (units / "gatekeeper@.service").read_text()
    assert f"ExecStart={prefix}/bin/gatekeeper run -c {conf}/%i.yaml\n" in service
    assert "/opt/gatekeeper" not in service
    web = (units / "gatekeeper-web.service").read_text()
    assert f"ExecStart={prefix}/bin/gatekeeper web -c {conf}/gatekeeper.yaml\n" in web

    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        return  # tests/test_systemd.py reports the missing analyzer
    result = subprocess.run(
        [analyzer, "verify", str(units / "gatekeeper@ftp.service"),
         str(units / "gatekeeper@telnet.socket"), str(units / "gatekeeper-web.service"),
         str(units / "gatekeeper-stop@ftp.timer"), str(units / "gatekeeper-start@ftp.timer")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
