"""One close-code rule in both clients: reconnect unless 4500 <= code <= 4999 (terminal).

The test reads both sources: it calls the Python SDK's ``close_reconnects`` and, through Node,
the browser client's ``closeReconnects`` imported from the real ``web/tidings.js``.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tidings.server.gateway.protocol import close_reconnects

from .support.timing import UNIT
from .support.tools import missing_tool

WEB = Path(__file__).resolve().parents[1] / "web"

# Network and RFC 6455 codes, the registered 3000-3999 range, the "reconnect" and "terminal"
# application ranges (with their edges), and codes past them up to the largest a frame can carry.
CODES = [
    1000,
    1001,
    1006,
    1011,
    3000,
    3999,
    4000,
    4001,
    4008,
    4029,
    4499,
    4500,
    4501,
    4503,
    4999,
    5000,
    65535,
]


def documented_rule(code: int) -> bool:
    """The rule as documented in server/gateway/protocol.py and web/tidings.js: only 4500-4999 are terminal."""
    return not 4500 <= code <= 4999


def _detect_module_flags(version: str) -> list[str]:
    """Node options that make it read web/*.js (no package.json) as ES modules.

    Node detects ES module syntax by default from 20.19 and 22.7; between 20.10 and those
    releases the same behaviour needs ``--experimental-detect-module``.
    """
    match = re.match(r"v(\d+)\.(\d+)", version)
    if match is None:
        return []
    major, minor = int(match[1]), int(match[2])
    if (major == 20 and 10 <= minor < 19) or major == 21 or (major == 22 and minor < 7):
        return ["--experimental-detect-module"]
    return []


def js_close_reconnects(codes: list[int]) -> list[object]:
    """``closeReconnects`` of web/tidings.js over ``codes``, evaluated by Node."""
    node = shutil.which("node")
    if node is None:
        missing_tool(
            "node is not installed (apt-get install nodejs): the browser client's rule cannot be read"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=10 * UNIT
    )
    script = (
        f"const t = await import({json.dumps((WEB / 'tidings.js').as_uri())});"
        f"console.log(JSON.stringify({json.dumps(codes)}.map((code) => t.closeReconnects(code))));"
    )
    result = subprocess.run(
        [node, *_detect_module_flags(version.stdout), "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=10 * UNIT,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("code", CODES)
def test_python_rule_is_the_documented_one(code: int) -> None:
    """close_reconnects (server/gateway/protocol.py, used by client/connection.py) follows the documented rule."""
    assert close_reconnects(code) is documented_rule(code)


def test_browser_and_python_clients_agree() -> None:
    """web/tidings.js closeReconnects gives the same verdict as the Python rule for every code in the table."""
    verdicts = js_close_reconnects(CODES)
    assert verdicts == [documented_rule(code) for code in CODES]
    assert verdicts == [close_reconnects(code) for code in CODES]


def test_the_python_client_uses_the_shared_rule() -> None:
    """client/connection.py decides with protocol.close_reconnects and compares no close code itself."""
    tree = ast.parse(
        (Path(__file__).resolve().parents[1] / "client" / "connection.py").read_text(encoding="utf-8")
    )
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "tidings.server.gateway.protocol"
        for alias in node.names
    }
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "close_reconnects"
    ]
    compared = [
        constant.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        for constant in ast.walk(node)
        if isinstance(constant, ast.Constant)
        and isinstance(constant.value, int)
        and 4000 <= constant.value <= 4999
    ]
    assert "close_reconnects" in imported
    assert calls, "client/connection.py no longer asks close_reconnects"
    assert compared == [], f"client/connection.py compares close codes itself: {compared}"


def test_detect_module_flags() -> None:
    """The Node flag is added only for releases that know it but do not yet detect ES modules by default."""
    assert _detect_module_flags("v20.20.2\n") == []
    assert _detect_module_flags("v20.12.0") == ["--experimental-detect-module"]
    assert _detect_module_flags("v22.6.0") == ["--experimental-detect-module"]
    assert _detect_module_flags("v22.7.0") == []
    assert _detect_module_flags("v24.1.0") == []
