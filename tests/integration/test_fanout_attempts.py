"""A fanned-out text's attempts: the response header and the access log line never disagree.

A streamed answer's headers leave when segment 1 is ready, before the other segments are done, so it sends
no ``x-speech-router-attempts`` (it would undercount) and the access log line, written at the end, has the
total. A whole file's header is written at the end too, and says the same as its log line.
"""

from __future__ import annotations

from tests.integration import test_access_log
from tests.integration.test_access_log import only_line
from tests.integration.test_fanout import SPEECH, config, expected_segments, post, speech

lines = test_access_log.lines  # the access log's fixture: collects its JSON lines


def test_a_streamed_fan_out_sends_no_attempts_header_and_logs_every_segments_attempt(nodes, router, lines):
    fleet = [nodes(name=f"n{i}") for i in range(2)]
    srv = router(config(*(n.url for n in fleet)))
    segments = expected_segments()

    reply = post(srv.url, SPEECH, speech("pcm"))

    assert reply.status == 200 and reply.complete
    assert reply.headers["x-speech-router-segments"] == str(len(segments))
    assert "x-speech-router-attempts" not in reply.headers
    assert only_line(lines, reply)["attempts"] == len(segments) == sum(n.served for n in fleet)


def test_a_whole_file_fan_out_header_and_log_line_agree(nodes, router, lines):
    fleet = [nodes(name=f"n{i}") for i in range(2)]
    srv = router(config(*(n.url for n in fleet)))

    reply = post(srv.url, "/synthesize", {"model": "indextts2", "text": speech()["input"], "voice": "alloy",
                                          "format": "wav", "stream": False})

    assert reply.status == 200
    logged = only_line(lines, reply)["attempts"]
    assert reply.headers["x-speech-router-attempts"] == str(logged) == str(len(expected_segments()))
