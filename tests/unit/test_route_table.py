"""The route table is the one place route facts live: what the edge, auth, metrics and the config read from it."""

from __future__ import annotations

import pytest

from speech_router.api.auth import ADMIN_PREFIX, Authenticator
from speech_router.api.spec import Access, ApiRoute, Doc, ErrorShape, RouteTable
from speech_router.api.synthesis import SynthesisRoute
from speech_router.api.table import ROUTES
from speech_router.config.models import AuthConfig


def test_admin_routes_and_only_they_live_under_the_admin_prefix():
    for route in ROUTES:
        assert (route.access is Access.ADMIN) == route.path.startswith(ADMIN_PREFIX), route


def test_the_default_open_paths_are_the_tables_open_routes():
    assert sorted(AuthConfig().open_paths) == sorted(ROUTES.open_paths())


def test_synthesis_routes_carry_their_metric_label_and_plan_router_respond_handler():
    synthesis = [route for route in ROUTES if route.metric is not None]
    assert {route.path for route in synthesis} == {"/v1/audio/speech", "/audio/speech", "/synthesize", "/tts_url"}
    assert ROUTES.metric_labels() == {"/v1/audio/speech", "/synthesize", "/tts_url"}  # the alias counts as /v1
    assert all(isinstance(route.handler, SynthesisRoute) for route in synthesis)
    assert [r.path for r in ROUTES if r.errors is ErrorShape.TTS_URL] == ["/tts_url"]


def test_each_old_name_stands_for_a_route_with_the_same_access():
    aliases = [route for route in ROUTES if route.alias_of is not None]
    assert {route.path for route in aliases} == {"/admin/backends", "/admin/backends/{name:path}/drain",
                                                 "/admin/backends/{name:path}/undrain"}
    for alias in aliases:
        [target] = [r for r in ROUTES if r.path == alias.alias_of]
        assert (alias.access, alias.methods, alias.doc.deprecated) == (target.access, target.methods, True)


def test_match_finds_fixed_and_parameter_paths_and_a_paths_route_for_another_method():
    assert ROUTES.match("POST", "/tts_url").operation_id == "post_tts_url"
    assert ROUTES.match("HEAD", "/livez").operation_id == "get_livez"
    assert ROUTES.match("POST", "/admin/endpoints/pool/a:1/drain").operation_id == "post_admin_endpoints_name_drain"
    assert ROUTES.match("DELETE", "/v1/audio/voices/alloy").access is Access.VOICES
    assert ROUTES.match("GET", "/v1/audio/voices").access is Access.CLIENT
    assert ROUTES.match("POST", "/v1/audio/voices").access is Access.VOICES
    assert ROUTES.match("GET", "/tts_url").path == "/tts_url"  # a 405, answered in /tts_url's shape
    assert ROUTES.match("GET", "/nope") is None


def test_two_routes_for_one_method_and_path_are_refused():
    async def handler(request):  # pragma: no cover - never called
        raise AssertionError

    route = ApiRoute("/x", ("GET",), handler, "get_x", Access.CLIENT, Doc("x", "t", {}))
    with pytest.raises(ValueError, match="two routes for GET /x"):
        RouteTable([route, route])


@pytest.mark.parametrize("path, access, expected", [
    ("/livez", Access.OPEN, Access.OPEN), ("/metrics", Access.OPEN, Access.CLIENT),  # open_paths decide
    ("/v1/models", Access.CLIENT, Access.OPEN), ("/admin/reload", Access.ADMIN, Access.ADMIN),
    ("/admin/unknown", None, Access.ADMIN), ("/unknown", None, Access.CLIENT),
    ("/v1/audio/voices", Access.VOICES, Access.VOICES),
])
def test_open_paths_open_client_routes_only(path, access, expected):
    auth = Authenticator([], open_paths=["/livez", "/v1/models", "/admin/reload", "/v1/audio/voices"])
    assert auth.access(access, path) is expected
