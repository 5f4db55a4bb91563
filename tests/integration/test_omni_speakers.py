"""The vllm-omni emulator's speaker cache: the first use of a voice on a node costs more, an LRU keeps a few.

Counted, not timed: the node exports how many voices it had to condition (``emulator_speaker_cache_misses``).
"""

from __future__ import annotations

from tests.client import call
from tests.integration.omni import data_url
from tests.integration.voice_uploads import tone


def misses(url: str) -> float:
    line = next(x for x in call(url + "/metrics").body.decode().splitlines()
                if x.startswith("emulator_speaker_cache_misses_total"))
    return float(line.split()[-1])


def test_a_voice_is_conditioned_on_first_use_and_kept_in_a_bounded_lru(omni_nodes):
    node = omni_nodes(name="a", speaker_cache=2, speaker_first_use_s=0.01)
    a, b, c = (data_url(tone(1.2, hz=hz)) for hz in (110, 220, 330))
    seen = []
    for ref in (a, a, b, a, c, b, a):  # LRU of 2: a a(hit) b a(hit) c(evicts b) b(evicts a) a
        r = call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref})
        assert r.status == 200
        seen.append(misses(node.url))
    assert seen == [1, 1, 2, 2, 3, 4, 5]
    node.app.state.voices.add("narrator", "ok", tone(1.2, hz=110), "a.wav", "audio/wav")
    assert call(node.url + "/v1/audio/speech", {"input": "hi", "voice": "narrator"}).status == 200
    assert misses(node.url) == 5  # the same audio uploaded is the same speaker: a is still held
