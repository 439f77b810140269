"""Real nginx for the tests, on deploy/nginx.conf itself (rendered, never copied by hand).

``render`` fills the template's ``${LB_*}`` placeholders the way the official nginx
image's envsubst step does for docker-compose.yml. ``Nginx`` runs the Debian package's
binary with its own prefix, pid file, logs and temp dirs under a temporary directory,
on a free port of 127.0.0.1, and stops it by the pid it started. Without nginx the
tests skip locally and FAIL in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.processes import free_port

from .timing import UNIT, wait_until_sync
from .tools import missing_tool

__all__ = ["NGINX_TEMPLATE", "Nginx", "check_config", "nginx_binary", "render", "run_nginx"]

NGINX_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
_PLACEHOLDER = re.compile(r"\$\{(LB_[A-Z0-9_]+)\}")


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``${LB_*}`` placeholders (envsubst with NGINX_ENVSUBST_FILTER=^LB_); nginx's ``$vars`` stay.

    Raises:
        KeyError: a placeholder has no value (envsubst would leave it empty: a broken config).
    """
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


def nginx_binary() -> str:
    """The nginx binary, or skip (locally) / fail (CI) when there is none."""
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
    )
    if found is None:
        missing_tool("nginx is not installed (apt-get install nginx)")
    return found


@dataclass
class Nginx:
    port: int
    root: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def log(self) -> str:
        path = self.root / "logs" / "nginx.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _prepare(root: Path, nodes: Sequence[str], port: int) -> Path:
    for name in ("conf", "logs", "temp"):
        (root / name).mkdir(parents=True, exist_ok=True)
    values = {"LB_PORT": f"127.0.0.1:{port}", "LB_TEMP_DIR": str(root / "temp")}
    values.update({f"LB_NODE_{i}": node for i, node in enumerate(nodes, start=1)})
    config = root / "conf" / "nginx.conf"
    config.write_text(render(NGINX_TEMPLATE.read_text(), values))
    return config


def _arguments(binary: str, root: Path, config: Path) -> list[str]:
    directives = f"pid {root / 'nginx.pid'}; daemon off;"
    if os.geteuid() == 0:
        # Workers would otherwise run as nobody and could not write the temp dirs of this test.
        directives += " user root;"
    return [
        binary,
        "-p",
        f"{root}/",
        "-c",
        str(config),
        "-e",
        str(root / "logs" / "error.log"),
        "-g",
        directives,
    ]


def check_config(
    root: Path, nodes: Sequence[str], *, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on deploy/nginx.conf rendered for ``nodes`` (``host:port`` each)."""
    binary = nginx_binary()
    config = _prepare(root, nodes, port or free_port())
    return subprocess.run(
        [*_arguments(binary, root, config), "-t"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=False,
    )


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=UNIT):
        return True
    return False


@contextlib.contextmanager
def run_nginx(root: Path, nodes: Sequence[str]) -> Iterator[Nginx]:
    """nginx on deploy/nginx.conf in front of ``nodes`` until the block ends; stopped by its pid."""
    binary = nginx_binary()
    nginx = Nginx(free_port(), root)
    config = _prepare(root, nodes, nginx.port)
    with open(root / "logs" / "nginx.log", "ab") as log:
        nginx.process = subprocess.Popen(
            _arguments(binary, root, config), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    process = nginx.process
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"nginx exited with {process.returncode}:\n{nginx.log}")
            return _listening(nginx.port)

        wait_until_sync(up, timeout=10 * UNIT, what="nginx to listen")
        yield nginx
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # fast shutdown: open WebSockets would hold SIGQUIT up
            try:
                process.wait(timeout=10 * UNIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5 * UNIT)
