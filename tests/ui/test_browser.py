"""The fleet page in a real browser (headless Chromium over the DevTools protocol): it lists the emulated fleet,
plays what the playground asks for, uploads a voice, refuses a wrong key, and shows a client key only what it
may see. Skipped, saying why, where no Chromium is installed."""

from __future__ import annotations

import json

import pytest

from tests.client import call
from tests.integration.voice_uploads import tone
from tests.ui.cdp import Browser
from tests.ui.conftest import ADMIN_KEY, CLIENT_KEY, VOICES_KEY, save_screenshot

PNG = b"\x89PNG\r\n\x1a\n"


def connect(browser: Browser, url: str, key: str) -> str:
    """Open the page, type ``key`` and connect; the status line's state once the page decided."""
    browser.open(url + "/ui")
    browser.evaluate("sessionStorage.clear()")  # the last test's key: the page would connect with it
    browser.open(url + "/ui")
    browser.evaluate(f"document.getElementById('key').value = {json.dumps(key)}; "
                     "document.getElementById('connect').click()")
    state = browser.wait_for("['connected', 'refused', 'failed'].includes(document.getElementById('status')"
                             ".dataset.state) && document.getElementById('status').dataset.state")
    assert state != "failed", browser.evaluate("document.getElementById('status').textContent")
    return str(state)


def rows(browser: Browser) -> list[dict[str, str]]:
    return browser.evaluate("""[...document.querySelectorAll('#endpoints tbody tr')].map(tr => ({
        name: tr.dataset.endpoint, cells: [...tr.cells].map(td => td.textContent)}))""")


def test_the_admin_key_sees_every_endpoint_of_the_fleet_live(fleet, browser):
    assert connect(browser, fleet.url, ADMIN_KEY) == "connected"
    listed = rows(browser)
    assert sorted(r["name"] for r in listed) == sorted(n.url.removeprefix("http://") for n in fleet.nodes)
    assert all(r["cells"][1] == "gpu" and r["cells"][2] == "up" and r["cells"][3] == "closed" for r in listed)
    assert browser.evaluate("document.querySelector('#pools [data-pool=gpu]').textContent").endswith(
        "queue: 0 interactive, 0 batch")
    assert browser.evaluate("document.getElementById('fleet-source').textContent") == "(admin view)"
    before = browser.evaluate("document.getElementById('fleet-updated').textContent")
    browser.wait_for(f"document.getElementById('fleet-updated').textContent !== {json.dumps(before)}", timeout=10)
    assert not browser.evaluate("document.getElementById('voices').hidden")  # the admin key may upload


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_the_playground_speaks_and_the_page_plays_it(fleet, browser, fmt):
    assert connect(browser, fleet.url, CLIENT_KEY) == "connected"
    browser.evaluate(f"""document.getElementById('model').value = 'indextts2';
        document.getElementById('model').dispatchEvent(new Event('change'));
        document.getElementById('voice').value = 'alloy';
        document.getElementById('format').value = '{fmt}';
        document.getElementById('speak').click()""")
    state = browser.wait_for("document.getElementById('speak-result').dataset.state")
    assert state == "done", browser.evaluate("document.getElementById('speak-result').textContent")
    duration = browser.wait_for("(a => isFinite(a.duration) && a.duration > 0 && a.duration)"
                                "(document.getElementById('audio'))")
    assert duration > 0.5  # the emulator speaks about 0.06 s a character
    result = browser.evaluate("document.getElementById('speak-result').textContent")
    assert "spoken by 127.0.0.1:" in result and "(pool gpu)" in result
    if fmt == "mp3":
        save_screenshot(browser.screenshot(), "ui-playground.png")


def test_a_voice_uploaded_from_the_page_is_listed_for_the_fleet(fleet, browser, tmp_path):
    sample = tmp_path / "narrator.wav"
    sample.write_bytes(tone(seconds=2.0))
    assert connect(browser, fleet.url, VOICES_KEY) == "connected"
    assert browser.evaluate("document.getElementById('playground').hidden") is False  # a client key too
    browser.set_files("#upload-file", sample)
    browser.evaluate("""document.getElementById('upload-name').value = 'narrator';
        document.getElementById('upload-consent').value = 'recorded 2026-12-01, signed';
        document.getElementById('upload').click()""")
    state = browser.wait_for("document.getElementById('upload-result').dataset.state")
    assert state == "done", browser.evaluate("document.getElementById('upload-result').textContent")
    browser.wait_for("[...document.getElementById('voice').options].some(o => o.value === 'narrator')")


def test_a_wrong_key_is_refused_and_the_page_shows_nothing(fleet, browser):
    assert connect(browser, fleet.url, "not-a-key") == "refused"
    assert browser.evaluate("['fleet', 'playground', 'voices'].every(id => document.getElementById(id).hidden)")
    assert "refused" in browser.evaluate("document.getElementById('status').textContent")


def test_a_client_key_sees_health_and_the_playground_but_no_admin_view_nor_uploads(fleet, browser):
    assert connect(browser, fleet.url, CLIENT_KEY) == "connected"
    assert browser.evaluate("document.getElementById('fleet-source').textContent") == "(health view)"
    assert len(rows(browser)) == 2
    assert browser.evaluate("document.getElementById('voices').hidden")
    assert not browser.evaluate("document.getElementById('playground').hidden")


def test_no_key_ever_travels_in_a_url(fleet, browser):
    assert connect(browser, fleet.url, ADMIN_KEY) == "connected"
    assert browser.requested, "the browser recorded the page's requests"
    for key in (ADMIN_KEY, CLIENT_KEY, VOICES_KEY):
        assert not [url for url in browser.requested if key in url]


def test_after_traffic_the_fleet_view_shows_what_the_router_learned(fleet, browser):
    for words in range(1, 13):  # texts of several lengths teach the pool its latency shape
        body = {"model": "indextts2", "voice": "alloy", "input": "word " * words, "response_format": "wav"}
        assert call(fleet.url + "/v1/audio/speech", body, key=CLIENT_KEY).status == 200
    assert connect(browser, fleet.url, ADMIN_KEY) == "connected"
    served = [r for r in rows(browser) if int(r["cells"][8]) > 0]
    assert served, rows(browser)
    assert all(r["cells"][7].endswith(" ms/char") and r["cells"][5].startswith("×") for r in served)
    png = browser.screenshot()
    assert png.startswith(PNG)
    save_screenshot(png, "ui-fleet.png")
