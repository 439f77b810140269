"""SECURITY.md stays true: it covers every actor, names only files that exist, and has the checklist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "SECURITY.md").read_text()


def test_it_names_every_actor_of_the_threat_model() -> None:
    for actor in ("anonymous client", "signed-in user", "backend", "operator"):
        assert f"| {actor} |" in TEXT, actor


def test_every_file_it_points_to_exists() -> None:
    paths = set(re.findall(r"`((?:server|tests|deploy)/[\w./-]+|docker-compose\.yml)`", TEXT))
    assert paths, "SECURITY.md names the code behind each check"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert missing == []


def test_every_setting_it_names_is_a_real_one() -> None:
    from tidings.server.config import Settings

    known = {f"TIDINGS_{name.upper()}" for name in Settings.__dataclass_fields__} | {
        "TIDINGS_JWT_SECRET_FILE"
    }
    named = set(re.findall(r"TIDINGS_[A-Z_]+", TEXT))
    assert named and named <= known, named - known


def test_it_has_a_deployment_checklist_and_a_way_to_report() -> None:
    assert "## Deployment checklist" in TEXT and "## Reporting a vulnerability" in TEXT
    for topic in ("Secrets", "Dev mode off", "Allowed origins and hosts", "TLS at the proxy"):
        assert topic in TEXT, topic
