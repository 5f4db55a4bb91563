"""``GET /openapi.json`` over real HTTP, and a property-based run of schemathesis against real routers.

Two routers listen on 127.0.0.1 with client and admin keys on: one in front of an emulated index-tts-vllm
node, one with the embedded espeak engine. Generated requests pass the auth middleware, the dispatcher, a
backend and the audio encoders. The run is bounded (derandomized, a fixed number of examples per operation)
and asserts: no 5xx (a 504 only for a deadline the client itself set too short), an answer to every request,
documented statuses and content types, bodies matching their schemas, errors in the route's own shape.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import BaseRoute, Mount, Route

from speech_router import __version__
from speech_router.api.app import create_app
from speech_router.api.openapi import openapi_json, openapi_schema
from speech_router.api.spec import Access, ApiRoute, Doc, RouteTable
from speech_router.api.table import ROUTES
from speech_router.config.loader import embedded_config, settings_from_dict
from speech_router.config.models import Settings
from speech_router.emulator.index_tts_vllm import EmulatorConfig
from speech_router.emulator.serve import ServerHandle
from speech_router.plugins.manager import backend_registry, create_plugin_manager
from tests.conftest import Node, fleet_config

CLIENT_KEY = "fuzz-client-key"
ADMIN_KEY = "fuzz-admin-key"
ENV = {"SPEECH_ROUTER_API_KEYS": f"fuzzer={CLIENT_KEY}", "SPEECH_ROUTER_ADMIN_KEY": ADMIN_KEY}
AUTHORIZED = {"Authorization": f"Bearer {CLIENT_KEY}"}
SELF = ("GET", "/openapi.json")
#: every (method, OpenAPI path) of the route table
OPERATIONS = {(method, re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)) for route in ROUTES for method in route.methods}
DEADLINE_HEADER = "x-request-timeout"
SYNTHESIS = [("POST", "/synthesize"), ("POST", "/tts_url"), ("POST", "/v1/audio/speech")]
#: per operation; about 8 s for the whole file on an idle machine, well under 40 s on a busy 2-core one
FUZZ_EXAMPLES = 40
REQUEST_TIMEOUT_S = 20


def make_settings(config: dict[str, Any]) -> Settings:
    config["server"] = {"max_text_chars": 200, "max_body_bytes": 4096}  # short texts keep synthesis cheap
    return settings_from_dict(config, registry=backend_registry(create_plugin_manager(load_entrypoints=False)),
                              env={})


def serve(settings: Settings) -> ServerHandle:
    handle = ServerHandle(create_app(settings, pm=create_plugin_manager(load_entrypoints=False), env=ENV))
    handle.start()
    return handle


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """One healthy emulated index-tts-vllm node, with no delay."""
    node = Node(EmulatorConfig(name="fuzz"))
    node.server.start()
    yield node
    node.server.stop()


@pytest.fixture(scope="module")
def served(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A real router in front of the node, with client and admin keys, and long-form jobs on."""
    config = fleet_config(node.url)
    config["jobs"] = {"directory": str(tmp_path_factory.mktemp("jobs"))}
    srv = serve(make_settings(config))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def espeak_served() -> Iterator[ServerHandle]:
    """The zero-config router: the embedded espeak engine serves every model."""
    srv = serve(make_settings(embedded_config()))
    yield srv
    srv.stop()


def get(url: str, method: str = "GET", data: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


@pytest.fixture(scope="module")
def document(served: ServerHandle) -> dict[str, Any]:
    status, headers, body = get(served.url + "/openapi.json")  # no key, though client keys are on: it is public
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


# --- the document --------------------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1(document):
    validate_openapi(document)  # raises on any violation of the OpenAPI 3.1 schema, unresolvable $refs included
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["version"] == __version__
    assert "servers" not in document


def test_request_bodies_come_from_the_handlers_models(document):
    schemas = document["components"]["schemas"]
    speech = schemas["SpeechRequest"]
    assert set(speech["required"]) == {"model", "input", "voice"}
    assert speech["properties"]["speed"] == {"default": 1.0, "maximum": 4.0, "minimum": 0.25, "title": "Speed",
                                             "type": "number"}
    assert schemas["SynthesizeRequest"]["additionalProperties"] is False
    emotion = schemas["SynthesizeRequest"]["properties"]["emotion"]
    assert {"$ref": "#/components/schemas/EmotionSpec"} in emotion["anyOf"]  # $defs hoisted into components
    assert "EmotionSpec" in schemas and "VoiceId" in schemas
    assert not any("$defs" in schema for schema in schemas.values())
    assert schemas["TtsUrlRequest"]["required"] == ["text"]
    body = document["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/SpeechRequest"}
    assert body["example"] == {"model": "indextts2", "input": "Hello from speech-router.", "voice": "alloy",
                               "response_format": "wav"}  # this instance's first model and voice


def test_security_schemes_and_requirements(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["adminKey"] == {**schemes["adminKey"], "type": "http", "scheme": "bearer"}
    paths = document["paths"]
    assert paths["/v1/audio/speech"]["post"]["security"] == [{"apiKey": []}]
    assert paths["/v1/models"]["get"]["security"] == [{"apiKey": []}]
    assert paths["/admin/reload"]["post"]["security"] == [{"adminKey": []}]
    assert paths["/livez"]["get"]["security"] == []
    for status in ("401", "429"):
        assert paths["/v1/audio/speech"]["post"]["responses"][status]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/Error"}
        assert paths["/tts_url"]["post"]["responses"][status]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/TtsUrlError"}


def test_synthesis_routes_document_the_priority_and_deadline_headers(document):
    for path in ("/v1/audio/speech", "/audio/speech", "/synthesize", "/tts_url"):
        params = {p["name"]: p for p in document["paths"][path]["post"]["parameters"]}
        assert set(params) == {"x-priority", DEADLINE_HEADER}
        assert all(p["in"] == "header" and not p["required"] for p in params.values())
    assert "parameters" not in document["paths"]["/v1/models"]["get"]
    assert document["paths"]["/admin/backends/{name}/drain"]["post"]["parameters"] == [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]


def test_audio_content_types_are_documented(document):
    ok = document["paths"]["/v1/audio/speech"]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm",
                       "text/event-stream"}
    assert set(document["paths"]["/synthesize"]["post"]["responses"]["200"]["content"]) == set(ok) - \
        {"text/event-stream"}
    assert set(document["paths"]["/tts_url"]["post"]["responses"]["200"]["content"]) == {"audio/wav"}


def test_document_is_cached_on_app_state(served, document):
    assert served.app.state.openapi[1] == document
    status, _, body = get(served.url + "/openapi.json")
    assert status == 200 and json.loads(body) == document


def test_document_is_rebuilt_when_a_reload_swaps_the_settings():
    app = create_app(make_settings(fleet_config("http://127.0.0.1:9")), pm=create_plugin_manager(
        load_entrypoints=False), env={})
    request = SimpleNamespace(app=app)
    first = asyncio.run(openapi_json(request))
    cached = app.state.openapi[1]
    assert asyncio.run(openapi_json(request)).body == first.body and app.state.openapi[1] is cached
    app.state.settings = make_settings(embedded_config())  # what a reload does
    example = json.loads(asyncio.run(openapi_json(request)).body)["paths"]["/synthesize"]["post"]["requestBody"]
    assert example["content"]["application/json"]["example"]["model"] == next(iter(app.state.settings.models))
    assert app.state.openapi[1] is not cached


def app_operations(app_routes: list[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app serves, mounts included; HEAD (Starlette's GET twin) left out."""
    out: set[tuple[str, str]] = set()
    for route in app_routes:
        if isinstance(route, Route):
            path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", prefix + route.path)
            out |= {(method, path) for method in route.methods or () if method != "HEAD"}
        elif isinstance(route, Mount):
            out |= app_operations(route.routes, prefix + route.path)
    return out


def test_the_app_serves_the_route_table_and_the_document_describes_it():
    settings = make_settings(fleet_config("http://127.0.0.1:9"))
    app = create_app(settings, pm=create_plugin_manager(load_entrypoints=False), env={})
    served_ops = app_operations(app.routes)
    assert SELF in served_ops and ("GET", "/admin/endpoints") in served_ops and ("GET", "/admin/backends") in served_ops
    assert served_ops == OPERATIONS, "the app serves exactly the route table"
    document = openapi_schema(ROUTES, settings=settings)
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert documented == served_ops
    assert document["paths"]["/admin/backends"]["get"]["deprecated"] is True  # the old name, for one release
    assert "deprecated" not in document["paths"]["/admin/endpoints"]["get"]
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def test_only_the_tables_routes_are_documented():
    async def handler(request):  # pragma: no cover - never called
        raise AssertionError

    table = RouteTable([ApiRoute("/livez", ("GET",), handler, "get_livez", Access.OPEN, Doc("alive", "ops", {}))])
    document = openapi_schema(table)
    assert list(document["paths"]) == ["/livez"]
    assert list(document["paths"]["/livez"]) == ["get"]


def test_secured_operations_answer_401_in_their_documented_shape(served, document):
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            if not op["security"]:
                continue
            status, _, body = get(served.url + path.replace("{name}", "gpu-0"), method=method.upper())
            assert status == 401, (method, path, body)
            schema = op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            assert_error_shape(schema, json.loads(body))


# --- what the property-based run found: each a 502 (counted against the endpoint) before its fix ----------


@pytest.mark.parametrize("body,field", [
    ({"audio_paths": ["/data/voices/a.wav"]}, "spk_audio_path"),  # IndexTTS 1.x form: KeyError on a v2 node
    ({"emo_control_method": 2, "emo_vec": None}, "emo_vec"),  # sum(None) on the node
    ({"emo_control_method": 2, "emo_vec": ["0.1"] * 8}, "emo_vec"),  # sum() of strings on the node
    ({"emo_control_method": "2"}, "emo_control_method"),  # "2".value on the node
    ({"max_text_tokens_per_sentence": "many"}, "max_text_tokens_per_sentence"),  # int("many") on the node
])
def test_tts_url_bodies_that_crashed_the_node_are_the_clients_400(served, node, body, field):
    before = len(node.requests)
    body = {"text": "hello", "spk_audio_path": "/data/voices/alloy.wav", **body}
    if "audio_paths" in body:
        del body["spk_audio_path"]
    status, _, raw = get(served.url + "/tts_url", "POST", json.dumps(body).encode(), AUTHORIZED)
    assert status == 400, raw
    reply = json.loads(raw)
    assert_error_shape("TtsUrlError", reply)
    assert f"'{field}'" in reply["error"]
    assert len(node.requests) == before
    assert all(ep.window.tries(ep.clock()) == 0 for ep in served.app.state.router.endpoints)


def test_text_with_a_lone_surrogate_is_400_not_an_engine_failure(espeak_served):
    raw = b'{"model": "tts-1", "voice": "alloy", "input": "hello \\ud800", "response_format": "wav"}'
    status, _, body = get(espeak_served.url + "/v1/audio/speech", "POST", raw, AUTHORIZED)
    assert status == 400, body
    reply = json.loads(body)
    assert_error_shape("Error", reply)
    assert reply["error"]["param"] == "input" and reply["error"]["code"] == "invalid_text"
    assert all(ep.window.tries(ep.clock()) == 0 for ep in espeak_served.app.state.router.endpoints)


def test_a_clients_short_deadline_is_its_504_and_no_failure_of_the_endpoint(nodes, router):
    node = nodes(delay_s=0.3)
    srv = router(fleet_config(node.url))
    body = json.dumps({"model": "indextts2", "voice": "alloy", "input": "hello", "response_format": "wav"}).encode()
    for _ in range(8):  # more than a breaker's failure threshold
        status, _, raw = get(srv.url + "/v1/audio/speech", "POST", body, {DEADLINE_HEADER: "0.05"})
        assert status == 504 and json.loads(raw)["error"]["code"] == "deadline_exceeded", raw
    endpoint = srv.app.state.router.endpoints[0]
    assert endpoint.breaker.state.value == "closed" and endpoint.window.tries(endpoint.clock()) == 0


# --- property-based run ----------------------------------------------------------------------------------


def assert_error_shape(schema_name: str, body: Any) -> None:
    if schema_name == "TtsUrlError":
        assert set(body) == {"status", "error"} and body["status"] == "error", body
        assert isinstance(body["error"], str) and body["error"] and "Traceback" not in body["error"], body
    else:
        assert schema_name == "Error"
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def load_schema(srv: ServerHandle) -> Any:
    """The served document, loaded by schemathesis, with the key to send for each security scheme."""
    config = schemathesis.Config.from_dict({
        "request-timeout": REQUEST_TIMEOUT_S,
        "generation": {"with-security-parameters": False},  # keys stay valid: fuzz the requests, not the keys
        "auth": {"openapi": {"apiKey": {"bearer": CLIENT_KEY}, "adminKey": {"bearer": ADMIN_KEY}}},
    })
    return schemathesis.openapi.from_url(srv.url + "/openapi.json", config=config, timeout=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def emulated_schema(served: ServerHandle) -> Any:
    return load_schema(served)


@pytest.fixture(scope="module")
def espeak_schema(espeak_served: ServerHandle) -> Any:
    return load_schema(espeak_served)


def own_deadline_passed(case: Any, response: Any) -> bool:
    """A 504 for a deadline the client set shorter than any synthesis (``5e-324`` s): what it asked for."""
    try:
        seconds = float((case.headers or {}).get(DEADLINE_HEADER, "inf"))
    except ValueError:
        return False
    return response.status_code == 504 and seconds < 1 and b"no answer within the request deadline" in response.content


def call_and_check(case: Any, headers: dict[str, str] | None = None) -> Any:
    """Send one case; fail on a 5xx, no answer, an undocumented status or content type, or a body off its schema."""
    response = case.call(headers=headers, timeout=REQUEST_TIMEOUT_S)  # a reset or hung connection raises here
    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    if not own_deadline_passed(case, response):
        checks.append(not_a_server_error)
    case.validate_response(response, checks=checks)
    documented = case.operation.definition.raw["responses"][str(response.status_code)]
    ref = documented["content"].get("application/json", {}).get("schema", {}).get("$ref", "")
    if response.status_code >= 400 and ref.endswith(("/Error", "/TtsUrlError")):
        assert_error_shape(ref.rsplit("/", 1)[1], json.loads(response.content))
    return response


#: the fields that say which model and voice speak: taken from the example, so generated bodies reach a backend
#: (``spk_audio_path`` is ``/tts_url``'s voice; Hypothesis' draws for it depend on what it cached in earlier tests,
#: and a run once drew none that a node takes)
AIMED_FIELDS = ("model", "voice", "spk_audio_path")


def aimed(case: Any, example: dict[str, Any], drop: tuple[str, ...]) -> Any:
    """The generated body with this instance's model and voice (from the example), less fields it cannot serve."""
    if isinstance(case.body, dict):
        case.body = {k: v for k, v in case.body.items() if k not in drop} | \
            {k: v for k, v in example.items() if k in AIMED_FIELDS}
    return case


FUZZED = [("emulated", method, path) for method, path in sorted(OPERATIONS)] + \
    [("espeak", method, path) for method, path in SYNTHESIS]


# schemathesis' negative generation draws from the `random` module (which Hypothesis seeds); a library's notice
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"
                            ":hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize("fleet,method,path", FUZZED, ids=lambda v: v)
def test_generated_requests_get_no_5xx_and_documented_answers(request, fleet, method, path):
    # schemathesis' negative generation also draws from the `random` module, whose state other tests leave behind:
    # seeded here, so that what it draws does not depend on what ran before
    random.seed(f"{fleet} {method} {path}")
    operation = request.getfixturevalue(f"{fleet}_schema")[path][method]
    media = operation.definition.raw.get("requestBody", {}).get("content", {}).get("application/json", {})
    example = media.get("example")
    # the realtime route answers 101 (a WebSocket) and has no 2xx
    ok = min((int(status) for status in operation.definition.raw["responses"] if status.startswith("2")), default=None)
    if example is not None:  # this instance's working body really synthesizes (or submits a job), through a backend
        response = call_and_check(operation.Case(body=example), AUTHORIZED)
        assert response.status_code == ok, response.content[:300]
        assert ok == 202 or response.headers["content-type"][0].startswith("audio/"), response.headers
    strategies = [operation.as_strategy(generation_mode=mode)
                  for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    if example is not None:  # valid bodies that reach a backend: any format, rate, emotion, SSE...
        drop = ("speed",) if fleet == "emulated" else ()  # index-tts-vllm nodes take no speed
        strategies.append(operation.as_strategy().map(lambda case: aimed(case, example, drop)))
    statuses: list[int] = []

    @given(case=st.one_of(strategies))
    @settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        statuses.append(call_and_check(case).status_code)

    fuzz()
    # not vacuous: keys were accepted, and generated bodies (not only the example) got audio back
    assert set(statuses) - {401, 403}, statuses
    if example is not None:
        assert ok in statuses, statuses
