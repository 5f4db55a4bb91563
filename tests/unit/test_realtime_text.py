"""Text arriving in pieces is cut into the same segments as a whole text, each as soon as it is complete."""

from __future__ import annotations

import random
import re

import pytest

from speech_router.realtime.text import TextCutter
from speech_router.text import split_segments

EN = ("Good morning, and thank you for calling. Your order left our warehouse today. It costs 3.5 dollars, "
      "says Dr. Smith, e.g. for shipping. Is there anything else? Have a lovely day!")
ZH = "你好，欢迎致电。您的订单今天已经从仓库发出。预计周五中午之前送达！还有什么可以帮您？祝您愉快。"


def cutter(**kw: object) -> TextCutter:
    return TextCutter(max_chars=120, min_chars=20, hold_s=0.015, **kw)  # type: ignore[arg-type]


def feed_all(c: TextCutter, pieces: list[str]) -> list[tuple[int, str, float]]:
    """(index of the piece that completed it, segment, complete_at) for each segment, then the flush."""
    out = []
    for i, piece in enumerate(pieces):
        out += [(i, cut.text, cut.complete_at) for cut in c.feed(piece, float(i))]
    out += [(len(pieces), cut.text, cut.complete_at) for cut in c.flush()]
    return out


def squash(text: str) -> str:
    return re.sub(r"\s", "", text)


def test_each_sentence_is_cut_when_the_next_token_arrives_and_remembers_when_it_ended():
    tokens = ["Hello", " world", ".", " How", " are", " you", "?", " Fine"]
    assert feed_all(cutter(), tokens) == [(3, "Hello world.", 2.0), (7, "How are you?", 6.0), (8, "Fine", 7.0)]


@pytest.mark.parametrize("tokens, kept", [
    (["It", " costs", " 3", ".", "5", " dollars", "."], "It costs 3.5 dollars."),
    (["Ask", " Dr", ".", " Smith", " now", "."], "Ask Dr. Smith now."),
    (["Fruit", ",", " e", ".", "g", ".", " apples", "."], "Fruit, e.g. apples."),
])
def test_a_period_that_does_not_end_a_sentence_is_not_a_cut(tokens, kept):
    c = cutter()
    for i, token in enumerate(tokens[:-1]):
        assert c.feed(token, float(i)) == []
    assert [cut.text for cut in c.feed(tokens[-1], 9.0) + c.flush()] == [kept]


@pytest.mark.parametrize("text, held", [("Hello world.", True), ("Really?", True), ("好的。", True),
                                        ("It costs 3.", False), ("Ask Dr.", False), ("Hello world", False),
                                        ('He said "yes."', True)])
def test_only_a_mark_that_ends_a_sentence_whatever_follows_is_cut_after_the_hold(text, held):
    c = cutter()
    c.feed(text, 1.0)
    assert (c.due() == 1.015) if held else c.due() is None
    assert [cut.text for cut in c.cut_held()] == ([text] if held else [])


def test_chinese_is_cut_at_its_own_marks():
    pieces = [ZH[i:i + 3] for i in range(0, len(ZH), 3)]
    cuts = [text for _, text, _ in feed_all(cutter(), pieces)]
    assert cuts == split_segments(ZH, max_chars=120, min_chars=1) and len(cuts) == 5


def test_a_long_sentence_is_cut_at_a_clause_mark_before_it_ends():
    clause = "and then the story goes on for a while longer, "
    c = TextCutter(max_chars=60, min_chars=10)
    early = []
    for i, word in enumerate((clause * 4).split(" ")):
        early += c.feed(word + " ", float(i))
    assert early and all(len(cut.text) <= 60 and cut.text.endswith(",") for cut in early)


def test_clause_and_none_granularity():
    text = "First part, second part; third part. Next sentence"
    words = re.findall(r"\s*\S+", text)
    clause = [t for _, t, _ in feed_all(cutter(granularity="clause"), words)]
    assert clause == ["First part,", "second part;", "third part.", "Next sentence"]
    none = cutter(granularity="none")
    assert all(none.feed(word, 0.0) == [] for word in words) and none.due() is None
    assert [cut.text for cut in none.flush()] == split_segments(text, max_chars=120, min_chars=20)


@pytest.mark.parametrize("text", [EN, ZH, EN + "\n\n" + ZH])
def test_nothing_is_lost_or_repeated_however_the_text_is_chunked(text):
    rng = random.Random(7)
    for _ in range(20):
        pieces, rest = [], text
        while rest:
            size = rng.randint(1, 12)
            pieces.append(rest[:size])
            rest = rest[size:]
        cuts = feed_all(cutter(), pieces)
        assert squash("".join(t for _, t, _ in cuts)) == squash(text)
        assert [i for i, _, _ in cuts] == sorted(i for i, _, _ in cuts)
