"""Settings.from_env: every TIDINGS_* variable, its errors, and that nothing is read at import time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tidings.server.cluster.backplane import HistoryPolicy
from tidings.server.config import CONTROL_HISTORY, ConfigError, Secret, Settings


def from_env(**variables: str) -> Settings:
    return Settings.from_env({f"TIDINGS_{name.upper()}": value for name, value in variables.items()})


def test_empty_environment_gives_the_defaults() -> None:
    """No variables: in-memory backplane, 64 KiB frames, 10 s connect timeout, no keys, not dev."""
    settings = Settings.from_env({})
    assert settings.redis_url is None and settings.jwt_secret is None and settings.api_keys == ()
    assert (settings.max_message_size, settings.connect_timeout, settings.dev) == (64 * 1024, 10.0, False)
    assert settings.history_policies() == {"": HistoryPolicy(1000, 86400.0), "sys": CONTROL_HISTORY}
    assert settings.node_id


def test_every_variable_is_parsed() -> None:
    """Each field has its TIDINGS_ variable with the obvious type."""
    settings = from_env(
        redis_url="redis://127.0.0.1:6379/0",
        key_prefix="t1",
        node_id="node-a",
        jwt_secret="s3cret",
        api_keys="k1, k2,,",
        allowed_origins="https://a.example/, https://b.example",
        dev="yes",
        max_message_size="1000",
        outbox_size="5000",
        max_channels="7",
        connect_timeout="2.5",
        ping_interval="3",
        ping_timeout="4",
        history_size="50",
        history_ttl="60",
    )
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert (settings.key_prefix, settings.node_id) == ("t1", "node-a")
    assert settings.jwt_secret == Secret("s3cret")
    assert [k.reveal() for k in settings.api_keys] == ["k1", "k2"]
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.dev is True
    assert (settings.max_message_size, settings.outbox_size, settings.max_channels) == (1000, 5000, 7)
    assert (settings.connect_timeout, settings.ping_interval, settings.ping_timeout) == (2.5, 3.0, 4.0)
    assert settings.history_policies() == {"": HistoryPolicy(50, 60.0), "sys": CONTROL_HISTORY}


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("Off", False)]
)
def test_booleans(raw: str, value: bool) -> None:
    """TIDINGS_DEV takes the usual spellings, case-insensitively."""
    assert from_env(dev=raw).dev is value


def test_empty_variables_count_as_unset() -> None:
    """`TIDINGS_X=` (as compose files write it) keeps the default instead of failing or blanking."""
    settings = from_env(dev="", max_message_size="", redis_url="", jwt_secret=" ", node_id="", key_prefix="")
    assert settings.dev is False and settings.max_message_size == 64 * 1024
    assert settings.redis_url is None and settings.jwt_secret is None
    assert settings.node_id and settings.key_prefix == "tidings"


def test_history_overrides_per_namespace() -> None:
    """TIDINGS_HISTORY_SIZE_<NS> / _TTL_<NS> override the default for one namespace."""
    settings = from_env(history_size="100", history_size_room="10", history_ttl_user="5")
    assert settings.history_policies() == {
        "": HistoryPolicy(100, 86400.0),
        "room": HistoryPolicy(10, 86400.0),
        "user": HistoryPolicy(100, 5.0),
        "sys": CONTROL_HISTORY,
    }


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"max_message_size": "64k"}, "TIDINGS_MAX_MESSAGE_SIZE"),
        ({"outbox_size": "1.5"}, "TIDINGS_OUTBOX_SIZE"),
        ({"connect_timeout": "soon"}, "TIDINGS_CONNECT_TIMEOUT"),
        ({"dev": "maybe"}, "TIDINGS_DEV"),
        ({"history_size_room": "ten"}, "TIDINGS_HISTORY_SIZE_ROOM"),
        ({"history_ttl_dm": "forever"}, "TIDINGS_HISTORY_TTL_DM"),
        ({"max_channels": "0"}, "TIDINGS_MAX_CHANNELS"),
        ({"history_size": "-1"}, "TIDINGS_HISTORY_SIZE"),
        ({"max_message_size": "100", "outbox_size": "50"}, "TIDINGS_OUTBOX_SIZE"),
        ({"connect_timeout": "0"}, "TIDINGS_CONNECT_TIMEOUT"),
        ({"connect_timeout": "nan"}, "TIDINGS_CONNECT_TIMEOUT"),
        ({"ping_interval": "-5"}, "TIDINGS_PING_INTERVAL"),
        ({"history_ttl": "inf"}, "TIDINGS_HISTORY_TTL"),
        ({"history_size_room": "0"}, "TIDINGS_HISTORY_SIZE_ROOM"),
        ({"key_prefix": "a{b}"}, "TIDINGS_KEY_PREFIX"),
        ({"jwt_public_key": "/nonexistent/key.pem"}, "TIDINGS_JWT_PUBLIC_KEY"),
        ({"jwt_secret_file": "/nonexistent/secret"}, "TIDINGS_JWT_SECRET_FILE"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(variables: dict[str, str], named: str) -> None:
    """A value that cannot be used stops the node with a ConfigError that names the variable."""
    with pytest.raises(ConfigError, match=named):
        from_env(**variables)


def test_jwt_secret_file_and_public_key_file(tmp_path: Path) -> None:
    """Secrets can come from files (Docker/Kubernetes secrets); an explicit secret wins over the file."""
    (tmp_path / "secret").write_text("from-file\n")
    (tmp_path / "key.pem").write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    settings = from_env(jwt_secret_file=str(tmp_path / "secret"), jwt_public_key=str(tmp_path / "key.pem"))
    assert settings.jwt_secret == Secret("from-file")
    assert settings.jwt_public_key is not None and settings.jwt_public_key.startswith(
        "-----BEGIN PUBLIC KEY-----\n"
    )
    assert from_env(jwt_secret="direct", jwt_secret_file=str(tmp_path / "secret")).jwt_secret == Secret(
        "direct"
    )


def test_inline_public_key_with_escaped_newlines() -> None:
    """A PEM in one line with \\n escapes (as env files hold it) becomes a real PEM."""
    settings = from_env(jwt_public_key="-----BEGIN PUBLIC KEY-----\\nabc\\n-----END PUBLIC KEY-----")
    assert settings.jwt_public_key == "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----"


def test_secrets_never_show_in_reprs() -> None:
    """repr/str of the settings and of a Secret hide the value; equality still works (non-ASCII too)."""
    settings = from_env(jwt_secret="hunter2-é", api_keys="key-one")
    assert "hunter2" not in repr(settings) and "key-one" not in repr(settings)
    assert "hunter2" not in str(settings.jwt_secret)
    assert settings.jwt_secret == Secret("hunter2-é") and settings.jwt_secret != Secret("other")


def test_from_env_reads_only_the_mapping_and_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing comes from os.environ when a mapping is given; another prefix selects other variables."""
    monkeypatch.setenv("TIDINGS_DEV", "1")
    assert Settings.from_env({}).dev is False
    assert Settings.from_env({"APP_DEV": "1", "TIDINGS_DEV": "0"}, prefix="APP_").dev is True
    assert Settings.from_env().dev is True


def test_settings_are_frozen_and_unknown_variables_ignored() -> None:
    """Settings cannot change after start; TIDINGS_NONSENSE is not an error."""
    settings = Settings.from_env({"TIDINGS_NONSENSE": "x", "TIDINGS_HISTORY_OVERRIDES": "x"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dev = True  # type: ignore[misc]
