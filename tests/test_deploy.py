"""docker-compose.yml, the Dockerfile and deploy/nginx.conf agree with each other and with the code.

No Docker here: the compose file is parsed and every value the nodes would read goes
through ``Settings.from_env`` exactly as in a container; nginx's own ``nginx -t`` checks
deploy/nginx.conf rendered with the compose file's values.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tidings.server.config import NAMESPACES, Settings
from tidings.server.http.app import prepare_settings

from .support.nginx import NGINX_TEMPLATE, check_config, placeholders, render

ROOT = Path(__file__).resolve().parents[1]
GATEWAYS = ("gateway-1", "gateway-2", "gateway-3")
SETTINGS_VARIABLES = {f"TIDINGS_{field.name.upper()}" for field in dataclasses.fields(Settings)} | {
    "TIDINGS_JWT_SECRET_FILE",
    *(f"TIDINGS_HISTORY_{kind}_{namespace.upper()}" for kind in ("SIZE", "TTL") for namespace in NAMESPACES),
}
SECRET_VARIABLES = ("TIDINGS_JWT_SECRET", "TIDINGS_API_KEYS")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error} (compose's interpolation)
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    """``${NAME:?error}`` with NAME unset or empty: ``docker compose`` refuses to start with this error."""


def interpolate(value: object, env: Mapping[str, str]) -> str:
    """Compose's interpolation of ``value`` with ``env`` as the shell environment plus ``.env``."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        set_, empty = name in env, not env.get(name)
        if op.endswith("?") and (not set_ or (op == ":?" and empty)):
            raise MissingVariable(f"{name}: {arg}")
        if op.endswith("-") and (not set_ or (op == ":-" and empty)):
            return arg
        return env.get(name, "")

    return _INTERPOLATION.sub(substitute, str(value))


def read_dotenv(path: Path) -> dict[str, str]:
    """A compose ``.env`` file: ``NAME=value`` lines, ``#`` comments."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def make_env(path: Path) -> subprocess.CompletedProcess[str]:
    """``make env`` writing to ``path`` instead of ./.env."""
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), "env", f"ENV_FILE={path}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dotenv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What ``make env`` writes for compose; the other tests read the compose file with it."""
    path = tmp_path_factory.mktemp("compose") / ".env"
    make_env(path)
    return read_dotenv(path)


def environment(service: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    variables = service.get("environment") or {}
    assert isinstance(variables, dict), "environment must be a mapping (checked key by key)"
    return {str(key): interpolate(value, env) for key, value in variables.items()}


def gateway_settings(service: dict[str, Any], env: Mapping[str, str]) -> Settings:
    return Settings.from_env(environment(service, env))


def command_option(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def test_services_are_redis_three_gateways_nginx_and_a_loadtest_profile(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", *GATEWAYS, "nginx", "locust-master", "locust-worker"}
    for name in ("redis", *GATEWAYS, "nginx"):
        assert "profiles" not in services[name], f"{name} must run by default"
    for name in ("locust-master", "locust-worker"):
        assert services[name]["profiles"] == ["loadtest"]


def test_redis_has_a_healthcheck_the_gateways_wait_for(services: dict[str, Any]) -> None:
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    for name in GATEWAYS:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_every_gateway_variable_is_a_setting_and_parses(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    for name in GATEWAYS:
        env = environment(services[name], dotenv)
        unknown = {key for key in env if key.startswith("TIDINGS_")} - SETTINGS_VARIABLES
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"
        settings = prepare_settings(gateway_settings(services[name], dotenv))  # what create_app would refuse
        assert settings.node_id == name
        assert settings.redis_url is not None and settings.jwt_secret is not None and settings.api_keys


def test_the_three_gateways_share_one_config(services: dict[str, Any], dotenv: dict[str, str]) -> None:
    configs = [services[name] for name in GATEWAYS]
    envs = [environment(config, dotenv) for config in configs]
    assert len({env.pop("TIDINGS_NODE_ID") for env in envs}) == 3  # unique node ids ...
    assert envs[0] == envs[1] == envs[2]  # ... and nothing else differs
    stripped = [{key: value for key, value in config.items() if key != "environment"} for config in configs]
    assert stripped[0] == stripped[1] == stripped[2]


def test_redis_url_points_at_the_redis_service(services: dict[str, Any], dotenv: dict[str, str]) -> None:
    url = urlsplit(gateway_settings(services["gateway-1"], dotenv).redis_url or "")
    assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379
    assert "6379" in [str(port) for port in services["redis"].get("expose", ["6379"])]


def test_nginx_upstreams_are_the_gateways_on_the_port_they_serve(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    env = environment(services["nginx"], dotenv)
    assert placeholders(NGINX_TEMPLATE.read_text()) <= set(env), "every ${LB_*} has a value in compose"
    assert env["NGINX_ENVSUBST_FILTER"] == "^LB_" and env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    assert services["nginx"]["volumes"] == ["./deploy/nginx.conf:/etc/nginx/templates/nginx.conf.template:ro"]
    for index, name in enumerate(GATEWAYS, start=1):
        port = command_option(services[name]["command"], "--port")
        assert env[f"LB_NODE_{index}"] == f"{name}:{port}"
        assert port in [str(p) for p in services[name]["expose"]]
        assert services["nginx"]["depends_on"][name]["condition"] == "service_healthy"
    assert services["nginx"]["ports"] == [f"8080:{env['LB_PORT']}"]


def test_dockerfile_is_slim_unprivileged_and_checks_healthz_on_the_served_port(
    services: dict[str, Any],
) -> None:
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.index("AS runtime") :]
    assert "ARG PYTHON=python:3.11-slim" in text
    assert re.search(r"^USER tidings$", runtime, re.MULTILINE)
    healthcheck = runtime[runtime.index("HEALTHCHECK") :].split("\n\n")[0]
    port = command_option(services["gateway-1"]["command"], "--port")
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck
    assert f"EXPOSE {port}" in runtime and f'"--port", "{port}"' in runtime
    for name in GATEWAYS:
        assert services[name]["build"]["target"] == "runtime"
    assert services["locust-master"]["build"]["target"] == "loadtest"


def test_docker_waits_longer_than_a_drain(services: dict[str, Any], dotenv: dict[str, str]) -> None:
    """docker stop sends SIGTERM, then SIGKILL after stop_grace_period: the drain must fit in it."""
    for name in GATEWAYS:
        grace = float(services[name]["stop_grace_period"].rstrip("s"))
        assert gateway_settings(services[name], dotenv).drain_timeout < grace


def test_nginx_keeps_websockets_longer_than_the_ping_interval(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    """A socket is never silent longer than the node's ping interval; nginx must not cut it before."""
    rendered = render(NGINX_TEMPLATE.read_text(), environment(services["nginx"], dotenv))
    ws = rendered[rendered.index("location = /ws") :]
    ws = ws[: ws.index("}")]
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    assert "proxy_set_header Connection $connection_upgrade;" in ws
    settings = gateway_settings(services["gateway-1"], dotenv)
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        timeout = re.search(rf"{directive} (\d+)s;", ws)
        assert timeout is not None, directive
        assert float(timeout.group(1)) > settings.ping_interval + settings.ping_timeout
    assert "least_conn;" in rendered and "proxy_next_upstream error timeout http_502 http_503" in rendered
    assert rendered.count("max_fails=") == 3 and "zone " in rendered


def test_loadtest_services_use_the_locustfile_and_the_gateways_secrets(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    gateway = environment(services["gateway-1"], dotenv)
    for name in ("locust-master", "locust-worker"):
        command = services[name]["command"]
        assert (ROOT / command_option(command, "-f")).is_file(), "the locustfile the compose file runs"
        env = environment(services[name], dotenv)
        for secret in ("TIDINGS_JWT_SECRET", "TIDINGS_API_KEYS"):
            assert env[secret] == gateway[secret]
    assert command_option(services["locust-worker"]["command"], "--master-host") == "locust-master"
    assert command_option(services["locust-master"]["command"], "--host") == "http://nginx:8080"
    source = (ROOT / "loadtest" / "locustfile.py").read_text()
    classes = [arg for arg in services["locust-master"]["command"] if re.fullmatch(r"[A-Z]\w+", arg)]
    assert classes and all(f"class {name}(" in source for name in classes), classes
    assert "LossyChatUser" not in classes  # it drops messages on purpose: a self-test, not a load
    text = (ROOT / "Dockerfile").read_text()
    assert '"tidings[loadtest]"' in text[text.index("AS loadtest") : text.index("AS runtime")]


def test_nginx_accepts_deploy_nginx_conf(tmp_path: Path, services: dict[str, Any]) -> None:
    """`nginx -t` on the very file compose mounts, rendered with local upstreams."""
    result = check_config(tmp_path, ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- safe by default (issue 13 item 5) -------------------------------------------------------------


def test_compose_refuses_to_start_without_secrets(services: dict[str, Any]) -> None:
    """With neither the environment nor .env holding them, every service that reads a secret fails to start."""
    readers = [
        name
        for name, service in services.items()
        if set(SECRET_VARIABLES) & set(service.get("environment") or {})
    ]
    assert set(readers) == {*GATEWAYS, "locust-master", "locust-worker"}
    for name in readers:
        with pytest.raises(MissingVariable, match="make env"):
            environment(services[name], {})
        with pytest.raises(MissingVariable):  # set but empty counts as unset (":?")
            environment(services[name], dict.fromkeys(SECRET_VARIABLES, ""))


def test_no_secret_has_a_default_and_dev_mode_is_off(
    services: dict[str, Any], dotenv: dict[str, str]
) -> None:
    """Every secret is a required ${NAME:?...}; with only the secrets given, no node is in dev mode."""
    for name in (*GATEWAYS, "locust-master", "locust-worker"):
        raw = services[name]["environment"]
        for secret in SECRET_VARIABLES:
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", str(raw[secret])), (
                f"{name} {secret}: {raw[secret]}"
            )
    for name in GATEWAYS:
        settings = gateway_settings(services[name], dotenv)
        assert not settings.dev, f"{name} runs in dev mode unless TIDINGS_DEV is set"
        assert (
            settings.jwt_secret is not None and settings.jwt_secret.reveal() == dotenv["TIDINGS_JWT_SECRET"]
        )
        assert [key.reveal() for key in settings.api_keys] == [dotenv["TIDINGS_API_KEYS"]]
        assert gateway_settings(services[name], {**dotenv, "TIDINGS_DEV": "1"}).dev  # an explicit opt-in


def test_make_env_writes_strong_random_secrets_once(tmp_path: Path) -> None:
    """`make env` writes a private .env with long random secrets, different each time, never overwriting one."""
    first, second = tmp_path / "a" / ".env", tmp_path / "b" / ".env"
    first.parent.mkdir()
    second.parent.mkdir()
    make_env(first)
    make_env(second)
    assert first.stat().st_mode & 0o777 == 0o600
    values, others = read_dotenv(first), read_dotenv(second)
    assert set(values) == set(SECRET_VARIABLES)
    for secret in SECRET_VARIABLES:
        assert len(values[secret]) >= 40 and re.fullmatch(r"[A-Za-z0-9_-]+", values[secret]), secret
        assert values[secret] != others[secret]  # random, not a shipped default
    assert values["TIDINGS_JWT_SECRET"] != values["TIDINGS_API_KEYS"]
    before = first.read_text()
    again = make_env(first)
    assert first.read_text() == before and "left as it is" in again.stdout
    settings = Settings.from_env(values)  # what the gateways read from it
    assert settings.jwt_secret is not None and settings.api_keys


def test_dotenv_is_untracked() -> None:
    """The secrets file `make env` writes is ignored by git."""
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", ".env"], capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, ".env must be listed in .gitignore"
