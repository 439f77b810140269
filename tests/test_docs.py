"""The user docs stay true: docs/protocol.md names every op, push, error and close code of the
protocol; every setting is documented; every relative link resolves; nothing points outside the
repository. Pure and fast: reads files and imports pure modules only."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from tidings.server.config import Settings
from tidings.server.gateway import client_commands, protocol

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
USER_DOCS = ("protocol.md", "guarantees.md", "operations.md")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def documents() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def ops() -> set[str]:
    """Every op a client may send: the ``op`` literal of each member of the Command union."""
    names = set()
    for command in typing.get_args(client_commands.Command):
        (literal,) = typing.get_args(typing.get_type_hints(command)["op"])
        names.add(literal)
    return names


def pushes() -> set[str]:
    """Every push kind the server sends: the literals of ``"push": "<kind>"`` in server/, plus
    the kinds built from a variable (presence events, and the notifier's pushes)."""
    literal = set()
    for source in (ROOT / "server").rglob("*.py"):
        literal |= set(re.findall(r'"push":\s*"([a-z_]+)"', read(source)))
    # "push": event (commands.announce) and "push": kind (hub._event_push) carry join/leave.
    return literal | {"join", "leave"}


def constants(prefix: str) -> dict[str, int]:
    return {name: getattr(protocol, name) for name in protocol.__all__ if name.startswith(prefix)}


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of the same level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match is not None, f"no '## {heading}' section"
    return match.group(1)


# --- protocol.md ------------------------------------------------------------------------------


def test_the_derived_lists_are_not_empty() -> None:
    """Guards the tests below: an extraction that found nothing would make them pass vacuously."""
    assert {"connect", "subscribe", "publish", "ping"} <= ops()
    assert {"publication", "disconnect", "notification", "unread", "unsubscribe"} <= pushes()
    assert len(constants("ERR_")) >= 8 and len(constants("CLOSE_")) >= 6


def test_protocol_documents_every_op_with_a_heading_and_an_example() -> None:
    text = read(DOCS / "protocol.md")
    missing = sorted(op for op in ops() if f"### {op}\n" not in text or f'"op": "{op}"' not in text)
    assert missing == [], f"ops without a '### <op>' section and a JSON example: {missing}"


def test_protocol_documents_every_field_of_every_op() -> None:
    text = read(DOCS / "protocol.md")
    missing = []
    for command in typing.get_args(client_commands.Command):
        fields = set(command.__dataclass_fields__) - {"id", "op"}
        op = command.__dataclass_fields__["op"].default
        body = text.split(f"### {op}\n", 1)[-1].split("\n### ", 1)[0]
        # The dataclass says "unread_only"/"ids", the wire too; Connect's "subscribe" is the list.
        missing += [f"{op}.{name}" for name in sorted(fields) if f"`{name}`" not in body]
    assert missing == []


def test_protocol_documents_every_push_with_an_example() -> None:
    text = read(DOCS / "protocol.md")
    missing = sorted(
        kind for kind in pushes() if f"### {kind}\n" not in text or f'"push": "{kind}"' not in text
    )
    assert missing == [], f"pushes without a '### <kind>' section and a JSON example: {missing}"


def test_protocol_documents_every_error_code() -> None:
    table = section(read(DOCS / "protocol.md"), "Error codes")
    missing = sorted(
        name for name, code in constants("ERR_").items() if f"| {code} | `{name}` |" not in table
    )
    assert missing == []


def test_protocol_says_what_a_client_must_do_on_every_close_code() -> None:
    table = section(read(DOCS / "protocol.md"), "Close codes")
    missing = []
    for name, code in constants("CLOSE_").items():
        row = re.search(rf"^\| {code} \| `{name}` \| (.+?) \| (.+?) \|$", table, flags=re.M)
        if row is None:
            missing.append(name)
            continue
        advice = row.group(2)
        # The advice must agree with the code's range: reconnect, or not.
        assert ("do not reconnect" in advice) != protocol.close_reconnects(code), (name, advice)
    assert missing == []


def test_protocol_covers_frames_recovery_and_msgpack() -> None:
    text = read(DOCS / "protocol.md")
    for topic in ("## Frames and encodings", "## Recovery", "## Close codes"):
        assert topic in text, topic
    assert protocol.SUBPROTOCOL_JSON in text and protocol.SUBPROTOCOL_MSGPACK in text
    assert "several messages in one frame" in text
    assert '"recovered": false' in text and '"recovered": true' in text


# --- settings ---------------------------------------------------------------------------------


def settings_variables() -> set[str]:
    return {
        f"TIDINGS_{name.upper()}"
        for name in Settings.__dataclass_fields__
        if name != "history_overrides"  # read as TIDINGS_HISTORY_SIZE_<NS> / _TTL_<NS>
    }


def test_every_setting_is_documented() -> None:
    variables = settings_variables()
    assert len(variables) > 30 and "TIDINGS_REDIS_URL" in variables
    text = read(DOCS / "operations.md") + read(ROOT / "README.md")
    missing = sorted(v for v in variables if not re.search(rf"`{v}`", text))
    assert missing == []


def test_operations_covers_what_operators_need() -> None:
    text = read(DOCS / "operations.md")
    for heading in (
        "## Load balancer",
        "## Drain and rolling restarts",
        "## Redis",
        "## Metrics and alerts",
        "## Sizing",
    ):
        assert heading in text, heading


def test_every_metric_operations_names_is_a_real_one() -> None:
    sources = "".join(read(p) for p in (ROOT / "server").rglob("*.py"))
    served = set(re.findall(r'"(tidings_[a-z_]+)"', sources))
    assert "tidings_deliveries" in served
    # Every name, in tables and in PromQL alike; a sample name is its family plus a suffix.
    prose = re.sub(r"^```.*?^```", "", read(DOCS / "operations.md"), flags=re.M | re.S)  # not nginx's
    named = set(re.findall(r"\btidings_[a-z_]*[a-z]", prose))
    assert len(named) > 20, "operations.md lists the metrics"
    suffix = re.compile(r"_(total|bucket|count|sum)$")
    unknown = sorted(n for n in named if n not in served and suffix.sub("", n) not in served)
    assert unknown == []


def test_guarantees_say_what_is_promised_and_what_is_not() -> None:
    text = read(DOCS / "guarantees.md")
    assert "## What Tidings promises" in text and "## What Tidings does not promise" in text
    assert "## Faults, one by one" in text


# --- links and references ---------------------------------------------------------------------


def test_the_user_docs_exist_and_the_readme_links_them() -> None:
    readme = read(ROOT / "README.md")
    missing = [name for name in USER_DOCS if f"(docs/{name})" not in readme]
    assert missing == []


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file_that_exists(document: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", read(document))
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue  # an absolute URL, or an anchor in the same page
        target = (document.parent / link.split("#", 1)[0]).resolve()
        if not target.exists() or ROOT not in target.parents:
            broken.append(link)
    assert broken == []


def test_every_anchor_into_a_page_exists() -> None:
    checked = 0
    for document in documents():
        for link in re.findall(r"\]\(([^)\s]*#[^)\s]+)\)", read(document)):
            path, anchor = link.split("#", 1)
            if re.match(r"[a-z]+:", path):
                continue
            target = (document.parent / path) if path else document
            headings = re.findall(r"^#+ (.+)$", read(target), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{document.name}: {link}"
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("document", documents(), ids=lambda p: p.name)
def test_nothing_points_outside_the_repository(document: Path) -> None:
    text = read(document)
    for needle in ("DESIGN.md", "shared/", "steering", "../shared"):
        assert needle not in text, needle
