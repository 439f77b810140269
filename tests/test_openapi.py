"""The OpenAPI document (``GET /api/openapi.json``) and docs/http-api.md, kept true by checks, not care.

* the document is valid OpenAPI 3.1 (openapi-spec-validator), and the validator does refuse a broken one;
* the app's routes and the document's operations are the same set, both ways;
* the node serves the document, without a key;
* every request in docs/http-api.md runs against a live node on the real Valkey: the status is the one
  the page shows, the answer validates against the document's schema for that status (jsonschema, 2020-12),
  and so does every body the page shows; together the examples cover every operation.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from starlette.routing import Mount, Route

from tidings.server.config import Secret
from tidings.server.http.app import create_app
from tidings.server.http.openapi import OPENAPI_PATH, document

from .support.logs import error_log
from .support.node import RunningNode, run_node
from .support.node import test_settings as node_settings
from .support.timing import UNIT

ROOT = Path(__file__).resolve().parent.parent
HTTP_API_MD = ROOT / "docs" / "http-api.md"
DOC_API_KEY = "backend-key"  # the key the page's examples send
METHODS = ("get", "put", "post", "delete", "patch")


# --- the document -----------------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["apiKey"]["description"],
    }
    assert doc["security"] == [{"apiKey": []}]


def test_validator_refuses_a_broken_document() -> None:
    """The validation above means something: an undeclared path parameter, a schema of no type JSON
    Schema knows and a repeated operationId are each refused."""
    breakages = [
        lambda doc: doc["paths"]["/api/channels/{channel}/history"]["get"]["parameters"].pop(0),
        lambda doc: doc["components"]["schemas"]["Error"].update(type="objekt"),
        lambda doc: doc["paths"]["/healthz"]["get"].update(operationId="publish"),
    ]
    for breakage in breakages:
        broken = copy.deepcopy(document())
        breakage(broken)
        with pytest.raises(OpenAPIValidationError):
            validate(broken, cls=OpenAPIV31SpecValidator)


def references(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [
            *([value["$ref"]] if "$ref" in value else []),
            *(r for v in value.values() for r in references(v)),
        ]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def test_every_reference_resolves_and_every_component_is_used() -> None:
    """What the validator leaves to JSON Schema (it does not follow a schema's $ref), checked here."""
    doc = document()
    refs = set(references(doc))
    for ref in refs:
        _, _, section, name = ref.split("/")
        assert name in doc["components"][section], f"{ref} points nowhere"
    for section in ("schemas", "responses"):
        unused = {name for name in doc["components"][section] if f"#/components/{section}/{name}" not in refs}
        assert unused == set(), f"unused {section}"
    schemes = {name for requirement in doc["security"] for name in requirement}
    assert schemes == set(doc["components"]["securitySchemes"])


def app_operations() -> set[tuple[str, str]]:
    """Every (method, path) the app routes to a handler: the static Mount "/" and /ws (middleware) aside."""
    found = set()
    for route in create_app(node_settings()).routes:
        if isinstance(route, Mount) and route.path == "":
            continue
        assert isinstance(route, Route), f"a route of a kind this test does not know: {route!r}"
        found.update((method.lower(), route.path) for method in (route.methods or ()) - {"HEAD"})
    return found


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method, path) for path, item in document()["paths"].items() for method in item if method in METHODS
    }


def test_every_route_is_documented() -> None:
    assert app_operations() - documented_operations() == set()


def test_every_documented_operation_is_a_route() -> None:
    assert documented_operations() - app_operations() == set()
    assert len(documented_operations()) >= 20


def test_every_operation_says_its_errors_and_who_may_call_it() -> None:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            statuses = set(operation["responses"])
            assert "200" in statuses, where
            public = operation.get("security") == []
            if not public:
                assert "401" in statuses, f"{where}: authenticated, but no 401"
            if method == "post" or "requestBody" in operation:
                assert {"415", "413"} <= statuses, f"{where}: takes a JSON body, but no 413/415"


# --- schema checks ----------------------------------------------------------------------------------


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A 2020-12 validator for ``schema``, whose ``#/components/...`` references resolve in the document."""
    return Draft202012Validator({**schema, "components": document()["components"]})


def resolve(value: dict[str, Any]) -> dict[str, Any]:
    """Follow one ``$ref`` to a reusable component (a response), as the document's error statuses use."""
    if "$ref" not in value:
        return value
    _, _, section, name = value["$ref"].split("/")
    return document()["components"][section][name]  # type: ignore[no-any-return]


def response_schema(method: str, template: str, status: int, media_type: str) -> dict[str, Any]:
    responses = document()["paths"][template][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {template}: status {status} is not documented"
    content = resolve(responses[str(status)]).get("content", {})
    assert media_type in content, f"{method.upper()} {template} {status}: {media_type} is not documented"
    return content[media_type]["schema"]  # type: ignore[no-any-return]


def check(schema: dict[str, Any], value: Any, where: str) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(schema).iter_errors(value)
    ]
    assert not errors, f"{where}: {errors}"


def test_schemas_refuse_an_undocumented_field() -> None:
    """The response schemas are closed, so a field a route adds without the document is caught."""
    schema = response_schema("post", "/api/publish", 200, "application/json")
    check(schema, {"epoch": "e", "offset": 1}, "publish")
    assert not validator(schema).is_valid({"epoch": "e", "offset": 1, "extra": True})
    assert not validator(schema).is_valid({"epoch": "e"})


# --- docs/http-api.md -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One request of docs/http-api.md and the answer the page shows for it."""

    line: int
    method: str
    target: str  # path and query
    headers: dict[str, str]
    body: str
    status: int
    media_type: str
    answer: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def operation(self) -> tuple[str, str]:
        """(method, path template) of the document this request is an example of."""
        method = self.method.lower()
        for template in document()["paths"]:
            pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template))
            if method in document()["paths"][template] and re.fullmatch(pattern, self.path):
                return method, template
        raise AssertionError(
            f"http-api.md line {self.line}: {self.method} {self.path} is no documented operation"
        )


def _message(block: str) -> tuple[str, dict[str, str], str]:
    """The first line, the headers and the body of one HTTP message as the page writes it."""
    head, _, body = block.partition("\n\n")
    first, *header_lines = head.splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return first, headers, body.strip()


def examples() -> list[Example]:
    """Every ```http request block of the page, each followed by an ```http answer block."""
    text = HTTP_API_MD.read_text()
    blocks = [
        (text.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"```http\n(.*?)```", text, re.S)
    ]
    assert len(blocks) % 2 == 0, "every request block needs an answer block after it"
    found = []
    for (line, request), (_, answer) in zip(blocks[::2], blocks[1::2], strict=True):
        first, headers, body = _message(request)
        method, target = first.split(" ")
        status_line, answer_headers, answer_body = _message(answer)
        assert status_line.startswith("HTTP/1.1 "), f"line {line}: expected an answer block after the request"
        media_type = answer_headers.get("Content-Type", "application/json")
        status = int(status_line.split()[1])
        found.append(Example(line, method, target, headers, body, status, media_type, answer_body))
    return found


EXAMPLES = examples()


def test_examples_cover_every_operation() -> None:
    covered = {example.operation for example in EXAMPLES if example.status < 300}
    assert documented_operations() - covered == set()


def test_bodies_shown_match_the_document() -> None:
    """Every JSON body the page shows, request and answer, is what the document allows."""
    for example in EXAMPLES:
        method, template = example.operation
        where = f"http-api.md line {example.line}"
        if example.body and example.status < 300:
            body_schema = document()["paths"][template][method]["requestBody"]["content"]["application/json"]
            check(body_schema["schema"], json.loads(example.body), f"{where} (request)")
        schema = response_schema(method, template, example.status, example.media_type)
        if example.answer and example.media_type == "application/json":
            check(schema, json.loads(example.answer), f"{where} (answer)")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """One node on the real Valkey with the page's key, in dev mode (for /api/dev/token)."""
    settings = node_settings(
        redis_url=redis_url,
        key_prefix=f"t-{uuid.uuid4().hex[:12]}",
        dev=True,
        api_keys=(Secret(DOC_API_KEY),),
    )
    with error_log() as errors:
        node: RunningNode
        async with (
            run_node(settings) as node,
            httpx.AsyncClient(base_url=node.http_url, timeout=10 * UNIT) as http,
        ):
            yield http
        assert not errors.records, errors.messages()  # nothing the examples started failed in the background


@pytest.mark.asyncio(loop_scope="module")
async def test_node_serves_the_document_without_a_key(live: httpx.AsyncClient) -> None:
    response = await live.get(OPENAPI_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(json.dumps(document()))


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line{e.line}-{e.method}-{e.path}" for e in EXAMPLES])
async def test_example_runs_against_a_live_node(live: httpx.AsyncClient, example: Example) -> None:
    """The page's requests, in its order (later ones read what earlier ones wrote), on a real node."""
    method, template = example.operation
    response = await live.request(
        example.method, example.target, headers=example.headers, content=example.body.encode()
    )
    where = f"http-api.md line {example.line}: {example.method} {example.target} -> {response.text[:300]!r}"
    assert response.status_code == example.status, where
    media_type = response.headers["content-type"].split(";", 1)[0].strip()
    assert media_type == example.media_type, where
    schema = response_schema(method, template, response.status_code, media_type)
    check(schema, response.json() if media_type == "application/json" else response.text, where)
    if example.answer and media_type != "application/json":
        assert example.answer.splitlines()[0] in response.text, where
