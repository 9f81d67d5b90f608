"""The servers under test: gatekeeper and the C proxies an administrator could use instead.

Each ``start_*`` writes its configuration into a working directory, starts one
single-threaded process on loopback in front of ``upstream`` and returns a ``Subject``
(process, port) once the port answers; ``Subject.stop()`` ends it. HAProxy, nginx's stream
module and socat come from Debian's packages (``ensure_packages`` installs them when
missing). The same gatekeeper configuration serves every benchmark: 100,000 deny networks
loaded, recording on.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.common import cpu_seconds, free_port, stop, wait_port

RULES = 100_000
# Debian packages of the reference proxies (nginx-light carries no stream module itself).
PACKAGES = {"haproxy": "haproxy", "socat": "socat", "nginx": "nginx-light"}
NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@dataclass
class Subject:
    """A running server under test."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds the process has used so far."""
        return cpu_seconds(self.proc.pid)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        stop(self.proc)


def ensure_packages(*programs: str) -> None:
    """Install the Debian packages of ``programs`` that are missing (root or sudo)."""
    wanted = [PACKAGES[p] for p in programs if shutil.which(p) is None]
    if "nginx" in programs and not NGINX_STREAM.exists():
        wanted.append("libnginx-mod-stream")
    if not wanted:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing {' '.join(wanted)} from Debian's packages", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", *wanted], check=True, env=env)


def _started(name: str, proc: subprocess.Popen[bytes], port: int, workdir: Path) -> Subject:
    try:
        wait_port("127.0.0.1", port, timeout=60)
    except RuntimeError:
        err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
        stop(proc)
        raise RuntimeError(f"{name} did not start: {err.strip()[-2000:]}") from None
    return Subject(name, proc, port, workdir)


# -- gatekeeper -------------------------------------------------------------------------
def deny_networks(count: int = RULES, seed: int = 7) -> list[str]:
    """``count`` distinct /24 networks outside loopback, like a large blocklist."""
    rng = random.Random(seed)
    nets: set[str] = set()
    while len(nets) < count:
        first = rng.randrange(1, 224)
        if first != 127:
            nets.add(f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.0/24")
    return sorted(nets)


def start_gatekeeper(
    workdir: Path,
    upstream: int,
    *,
    protocol: str = "tcp",
    admit_loopback: bool = True,
    reject: str = "close",
    deny: tuple[str, ...] = (),
    extra: dict[str, object] | None = None,
) -> Subject:
    """gatekeeper with one listener in front of 127.0.0.1:``upstream`` and 100,000 deny
    networks; loopback clients are let through, or with ``admit_loopback=False`` refused
    by the default rule (the deciding lookup still walks the full table). ``deny``: more
    networks to deny; ``extra``: more listener settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    drop = workdir / "drop.txt"
    if not drop.exists():
        drop.write_text("# generated blocklist\n" + "\n".join(deny_networks()) + "\n")
    rules: dict[str, object] = {"default": "allow" if admit_loopback else "deny"}
    rules["deny"] = [{"file": "drop.txt"}, *deny]
    if not admit_loopback:
        rules["allow"] = ["10.0.0.0/8"]
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
    port = free_port()
    listener: dict[str, object] = {
        "name": "bench", "protocol": protocol, "listen": f"127.0.0.1:{port}",
        "upstream": f"127.0.0.1:{upstream}", "reject": reject,
    }  # fmt: skip
    listener.update(extra or {})
    config = {"database": "var/bench.db", "rules": ["rules.yaml"], "listeners": [listener]}
    path = workdir / "gatekeeper.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatekeeper", "run", "-c", str(path)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _started("gatekeeper", proc, port, workdir)


# -- HAProxy ----------------------------------------------------------------------------
def start_haproxy(
    workdir: Path, upstream: int, *, bufsize: int = 16384, reject: bool = False
) -> Subject:
    """HAProxy 2.x, one thread, TCP mode; ``reject``: refuse every connection at accept
    (``tcp-request connection reject``, which resets)."""
    ensure_packages("haproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    rule = "  tcp-request connection reject\n" if reject else ""
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 4096\n  nbthread 1\n"
        f"  tune.bufsize {bufsize}\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        f"frontend gate\n  bind 127.0.0.1:{port}\n{rule}  default_backend up\n"
        f"backend up\n  server up 127.0.0.1:{upstream}\n"
    )
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return _started(f"HAProxy {bufsize // 1024}k", proc, port, workdir)


# -- nginx stream -----------------------------------------------------------------------
def start_nginx(
    workdir: Path, upstream: int, *, bufsize: int = 16384, reject: bool = False
) -> Subject:
    """nginx's stream module, one process (no master); ``reject``: ``deny all`` (close)."""
    ensure_packages("nginx")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    rule = "deny all; " if reject else ""
    cfg = workdir / "nginx.conf"
    cfg.write_text(
        f"load_module {NGINX_STREAM};\n"
        "daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 20000;\n"
        f"error_log {workdir}/nginx-error.log error; pid {workdir}/nginx.pid;\n"
        "events { worker_connections 8192; }\n"
        "stream { server { "
        f"listen 127.0.0.1:{port}; {rule}proxy_pass 127.0.0.1:{upstream}; "
        f"proxy_buffer_size {bufsize}; }} }}\n"
    )
    proc = subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(cfg), "-e", str(workdir / "nginx-error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _started(f"nginx {bufsize // 1024}k", proc, port, workdir)


# -- socat ------------------------------------------------------------------------------
def start_socat(workdir: Path, upstream: int, *, bufsize: int = 8192) -> Subject:
    """socat, a process forked per connection (``-b`` sets its transfer block size)."""
    ensure_packages("socat")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [
            "socat",
            "-b",
            str(bufsize),
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
            f"TCP:127.0.0.1:{upstream}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _started(f"socat {bufsize // 1024}k", proc, port, workdir)


# -- the Python floor -------------------------------------------------------------------
def start_floor(workdir: Path, upstream: int) -> Subject:
    """``benchmarks/floor_proxy.py``: the least a Python proxy on uvloop can do."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.floor_proxy", str(port), str(upstream)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return _started("Python floor", proc, port, workdir)
