"""The fleet page's files as served (no browser needed): what is served, to whom, with which headers, and the admin
listing fields the page reads."""

from __future__ import annotations

import re

from speech_router.api.ui import FILES, UI_DIR
from tests.client import call
from tests.conftest import fleet_config
from tests.ui.conftest import ADMIN_KEY, ENV


def test_the_page_and_its_files_are_served_to_anyone_with_a_strict_policy(nodes, router):
    config = fleet_config(nodes(name="a").url)
    config["server"] = {"auth": {"keys": [{"name": "web", "key_env": "K"}], "open_paths": ["/livez"]}}
    srv = router(config, env={**ENV, "K": "client"})
    page = call(srv.url + "/ui")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in FILES:
        assert call(f"{srv.url}/ui/{name}").status == 200, name
    for name in ("nope.js", "index.htm"):
        assert call(f"{srv.url}/ui/{name}").status == 404, name
    assert call(f"{srv.url}/ui/..%2Fapi%2Fui.py").status in (401, 404)  # no route: a client path, never a file
    assert call(srv.url + "/health").status == 401  # the page is open; what it shows still needs a key


def test_server_ui_false_turns_the_page_off(nodes, router):
    config = fleet_config(nodes(name="a").url)
    config["server"] = {"ui": False}
    srv = router(config)
    assert call(srv.url + "/ui").status == 404
    assert call(srv.url + "/ui/app.js").status == 404


def test_the_page_is_its_own_files_only_no_cdn_no_inline_script():
    shipped = {p.name for p in UI_DIR.iterdir() if p.is_file()}
    assert shipped == set(FILES)  # every file is served (and packaged: pyproject's package-data), nothing else
    for name in shipped:
        text = (UI_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{name} loads from elsewhere"
        assert ".innerHTML" not in text, f"{name}: API answers are shown as text, never parsed as HTML"
    html = (UI_DIR / "index.html").read_text(encoding="utf-8")
    assert all(script.group(1) for script in re.finditer(r"<script([^>]*src=[^>]*)?>", html))


def test_the_admin_listing_has_queues_by_priority_and_attempts_by_outcome(nodes, router):
    node = nodes(name="a")
    srv = router(fleet_config(node.url), env=ENV)
    speech = {"model": "indextts2", "input": "hello", "voice": "alloy", "response_format": "wav"}
    assert call(srv.url + "/v1/audio/speech", speech).status == 200
    listing = call(srv.url + "/admin/endpoints", key=ADMIN_KEY).json()
    assert listing["pools"]["gpu"]["queue"] == {"interactive": 0, "batch": 0}
    (row,) = listing["endpoints"]
    assert row["attempts"] == {"ok": 1}
