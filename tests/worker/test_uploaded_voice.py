"""A voice uploaded through the router is spoken by the local engine from the router's own disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.integration.voice_uploads import ENV, tone, upload
from tests.worker.conftest import Host, plugin_manager, pool_config, wait_until
from tests.worker.test_router import call, endpoint_health


def test_an_uploaded_voice_is_read_by_the_local_worker_from_the_routers_disk(router: Any, host: Host,
                                                                            tmp_path: Path) -> None:
    store = tmp_path / "store"
    config = {"pools": {"local": {**pool_config(host), "health_check": {"interval": 0.1, "timeout": 1}}},
              "models": {"indextts2": ["local"]}, "voice_store": {"directory": str(store)}}
    srv = router(config, pm=plugin_manager(), env=ENV)
    wait_until(lambda: endpoint_health(srv.url, "local")["state"] == "up", "the local endpoint to be up")
    r = upload(srv.url, "Narrator", tone(1.5))
    assert r.status == 200, r.body
    sha = r.json()["voice"]["sha256"]
    status, _, body = call(srv.url + "/v1/audio/speech", {"model": "indextts2", "voice": "narrator",
                                                          "input": "Mine now.", "response_format": "wav"})
    assert status == 200 and body[:4] == b"RIFF", body[:200]
    (spoken,) = host.infer_calls("Mine now.")
    assert spoken["spk_audio_prompt"] == str(store / "audio" / f"{sha}.wav")  # the worker read the stored file
    assert json.loads((store / "names" / "narrator.json").read_text())["sha256"] == sha
