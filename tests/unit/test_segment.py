"""Sentence segmentation of long text for parallel synthesis (#7): real paragraphs, exact and invariant checks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from speech_router.config.models import FanoutConfig
from speech_router.text import DEFAULT_MAX_CHARS, DEFAULT_MIN_CHARS, split_segments, split_sentences

ZH_NEWS = (
    "新华社北京2026年11月24日电 国家统计局今天发布的数据显示，前三季度全国规模以上工业增加值同比增长5.2%，"
    "比上半年加快0.3个百分点。其中，高技术制造业增长9.1%，占规模以上工业增加值的比重为16.4%。"
    "国家统计局新闻发言人表示：“总体来看，经济运行稳中有进……但外部环境依然复杂严峻。”"
    "他同时指出，11月以来，部分地区出现了阶段性用电紧张；各地正在采取措施保障供应。"
    "据悉，下一次数据发布定于12月15日10:30举行。"
)
ZH_ESSAY = (
    "小时候，我最喜欢的地方是外婆家的院子。院子里有一棵老槐树，据说已经有100多岁了！"
    "每到夏天，外婆就搬出竹椅，坐在树下摇着蒲扇，给我们讲故事。"
    "她总说：“做人要像这棵树一样，根扎得深，才不怕风雨。”那时候我并不明白这句话的意思……"
    "直到许多年后，我独自离家去上海读书，才慢慢懂得。"
    "如今外婆已经不在了；老槐树却还在，每年春天依旧开满白花。"
)
EN_NEWS = (
    'WASHINGTON (Nov. 24) - Dr. Jane Smith, chief economist at the U.S. Department of Commerce, said on Monday '
    'that GDP grew 3.1% in the third quarter, beating forecasts of 2.8%. "The numbers are strong," she told '
    'reporters at 10:30 a.m. "But we are watching inflation closely." Exports rose to $1,250.5 billion, driven '
    'by aircraft, chips, software, etc. and by a weaker dollar. Mr. Lee of No. 5 Capital disagreed... He called '
    'the report "too optimistic." The full release is at https://www.commerce.gov/data/q3-2026.pdf?lang=en.'
)
EN_ESSAY = (
    "Most speech engines struggle with long input, i.e. anything beyond a paragraph or two. The reason is "
    "simple: attention cost grows with length, so a 4,000-character article takes far more than 10 times as "
    "long as a 400-character one. Splitting helps... but only if the cuts fall in the right places (e.g. "
    "between sentences, not inside 3.14 or St. Louis). Prof. Alan Brown's team measured a real-time factor "
    "of 0.12 on one GPU. “Fewer, longer segments sound better,” he wrote, “yet they stall the pipeline.” "
    "Questions? Write to alan.brown@univ.example.edu (replies within 2 days.)"
)
MIXED = (
    "我们在 8 张 H100 GPU 上部署了 IndexTTS2 模型，平均首包延迟为 0.35 秒。"
    "Dr. Wang 在会上说：“This is a big step forward for open-source TTS.” "
    "他补充道，下一版本（v2.1）将支持流式输出！"
    "更多信息请访问 https://github.com/index-tts/index-tts 或发邮件至 tts-team@example.org。"
    "Thanks to everyone who helped. 谢谢大家！"
)
LISTS = """Getting started

Follow these steps:
1. Install the package with pip install speech-router.
2. Write a fleet.yaml that lists your GPU nodes, e.g. http://10.0.0.5:8000.
3. Start the router and open http://localhost:8000/health in a browser.

The router checks every node once a second. If a node
fails three times in a row, it is ejected for 30 seconds
and traffic moves to the others.

部署步骤：
- 安装依赖；
- 启动服务。
"""

#: each paragraph with the tokens no cut may go through: numbers, dates, URLs, e-mail, abbreviations, ellipses
PARAGRAPHS = {
    "zh_news": (ZH_NEWS, ["2026年11月24日", "5.2%", "0.3", "9.1%", "16.4%", "……", "12月15日10:30"]),
    "zh_essay": (ZH_ESSAY, ["100", "……"]),
    "en_news": (EN_NEWS, [
        "Nov. 24", "Dr. Jane", "U.S.", "3.1%", "2.8%", "10:30", "a.m.", "$1,250.5", "etc.", "Mr. Lee", "No. 5",
        "...", "https://www.commerce.gov/data/q3-2026.pdf?lang=en",
    ]),
    "en_essay": (EN_ESSAY, [
        "i.e.", "4,000-character", "400-character", "...", "e.g.", "3.14", "St. Louis", "Prof. Alan", "0.12",
        "alan.brown@univ.example.edu",
    ]),
    "mixed": (MIXED, [
        "H100", "IndexTTS2", "0.35", "Dr. Wang", "open-source", "v2.1", "https://github.com/index-tts/index-tts",
        "tts-team@example.org",
    ]),
    "lists": (LISTS, [
        "1. Install", "2. Write", "3. Start", "speech-router", "fleet.yaml", "e.g.", "http://10.0.0.5:8000",
        "http://localhost:8000/health", "- 安装", "- 启动",
    ]),
}
LIMITS = [(120, 20), (60, 20), (40, 10), (25, 5)]


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize(("max_chars", "min_chars"), LIMITS)
@pytest.mark.parametrize("name", PARAGRAPHS)
def test_invariants_on_real_paragraphs(name: str, max_chars: int, min_chars: int) -> None:
    text, tokens = PARAGRAPHS[name]
    segments = split_segments(text, max_chars=max_chars, min_chars=min_chars)
    assert len(segments) > 1
    # every character of content once, in order
    assert squeeze("".join(segments)) == squeeze(text)
    for segment in segments:
        assert segment and segment == segment.strip()
        if len(segment) > max_chars:  # only a token longer than the limit, with the mark after it
            assert any(len(token) > max_chars and token in segment and len(segment) - len(token) <= 1
                       for token in tokens), segment
    # no cut through a protected token
    for token in tokens:
        assert sum(segment.count(token) for segment in segments) == text.count(token), token
    # a short segment is short only because neither neighbour had room for it
    for index, segment in enumerate(segments):
        if len(segment) < min_chars:
            neighbours = segments[index - 1:index] + segments[index + 1:index + 2]
            assert all(len(segment) + 1 + len(other) > max_chars for other in neighbours), segment


def test_same_segments_in_every_process() -> None:
    """Segments key the per-segment cache, so they must not depend on hash randomisation."""
    texts = [text for text, _ in PARAGRAPHS.values()]
    script = ("import json, sys; from speech_router.text import split_segments; "
              "print(json.dumps([split_segments(t, max_chars=40, min_chars=10) for t in json.load(sys.stdin)]))")
    here = [split_segments(text, max_chars=40, min_chars=10) for text in texts]
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=30)
        assert json.loads(out.stdout) == here
    assert [split_segments(text, max_chars=40, min_chars=10) for text in texts] == here


def test_chinese_news_default_limits() -> None:
    assert split_sentences(ZH_NEWS) == [
        "新华社北京2026年11月24日电国家统计局今天发布的数据显示，前三季度全国规模以上工业增加值同比增长5.2%，"
        "比上半年加快0.3个百分点。",
        "其中，高技术制造业增长9.1%，占规模以上工业增加值的比重为16.4%。",
        "国家统计局新闻发言人表示：“总体来看，经济运行稳中有进……",
        "但外部环境依然复杂严峻。”",
        "他同时指出，11月以来，部分地区出现了阶段性用电紧张；",
        "各地正在采取措施保障供应。",
        "据悉，下一次数据发布定于12月15日10:30举行。",
    ]
    assert split_segments(ZH_NEWS) == [
        "新华社北京2026年11月24日电国家统计局今天发布的数据显示，前三季度全国规模以上工业增加值同比增长5.2%，"
        "比上半年加快0.3个百分点。",
        "其中，高技术制造业增长9.1%，占规模以上工业增加值的比重为16.4%。",
        "国家统计局新闻发言人表示：“总体来看，经济运行稳中有进……",
        "但外部环境依然复杂严峻。”他同时指出，11月以来，部分地区出现了阶段性用电紧张；",
        "各地正在采取措施保障供应。据悉，下一次数据发布定于12月15日10:30举行。",
    ]


def test_chinese_essay_merges_short_sentences() -> None:
    assert split_segments(ZH_ESSAY) == [
        "小时候，我最喜欢的地方是外婆家的院子。院子里有一棵老槐树，据说已经有100多岁了！",
        "每到夏天，外婆就搬出竹椅，坐在树下摇着蒲扇，给我们讲故事。",
        "她总说：“做人要像这棵树一样，根扎得深，才不怕风雨。”",
        "那时候我并不明白这句话的意思……直到许多年后，我独自离家去上海读书，才慢慢懂得。",
        "如今外婆已经不在了；老槐树却还在，每年春天依旧开满白花。",
    ]


def test_english_news_default_limits() -> None:
    assert split_segments(EN_NEWS) == [
        "WASHINGTON (Nov. 24) - Dr. Jane Smith, chief economist at the U.S. Department of Commerce,",
        "said on Monday that GDP grew 3.1% in the third quarter, beating forecasts of 2.8%.",
        '"The numbers are strong," she told reporters at 10:30 a.m.',
        '"But we are watching inflation closely."',
        "Exports rose to $1,250.5 billion, driven by aircraft, chips, software, etc. and by a weaker dollar.",
        "Mr. Lee of No. 5 Capital disagreed...",
        'He called the report "too optimistic."',
        "The full release is at https://www.commerce.gov/data/q3-2026.pdf?lang=en.",
    ]


def test_english_essay_splits_long_sentences_at_clauses_then_spaces() -> None:
    assert split_segments(EN_ESSAY, max_chars=60, min_chars=20) == [
        "Most speech engines struggle with long input,",
        "i.e. anything beyond a paragraph or two.",
        "The reason is simple: attention cost grows with length,",
        "so a 4,000-character article takes far more than 10 times as",
        "long as a 400-character one.",
        "Splitting helps... but only if the cuts fall in the right",
        "places (e.g. between sentences,",
        "not inside 3.14 or St. Louis).",
        "Prof. Alan Brown's team measured a real-time",
        "factor of 0.12 on one GPU.",
        "“Fewer, longer segments sound better,” he wrote,",
        "“yet they stall the pipeline.”",
        "Questions? Write to alan.brown@univ.example.edu",
        "(replies within 2 days.)",
    ]


def test_mixed_chinese_english() -> None:
    assert split_segments(MIXED) == [
        "我们在 8 张 H100 GPU 上部署了 IndexTTS2 模型，平均首包延迟为 0.35 秒。",
        "Dr. Wang 在会上说：“This is a big step forward for open-source TTS.”",
        "他补充道，下一版本（v2.1）将支持流式输出！",
        "更多信息请访问 https://github.com/index-tts/index-tts 或发邮件至 tts-team@example.org。",
        "Thanks to everyone who helped. 谢谢大家！",
    ]


def test_lines_paragraphs_and_lists() -> None:
    assert split_sentences(LISTS) == [
        "Getting started",
        "Follow these steps:",
        "1. Install the package with pip install speech-router.",
        "2. Write a fleet.yaml that lists your GPU nodes, e.g. http://10.0.0.5:8000.",
        "3. Start the router and open http://localhost:8000/health in a browser.",
        "The router checks every node once a second.",
        "If a node fails three times in a row, it is ejected for 30 seconds and traffic moves to the others.",
        "部署步骤：",
        "- 安装依赖；",
        "- 启动服务。",
    ]
    assert split_segments(LISTS) == [
        "Getting started Follow these steps:",
        "1. Install the package with pip install speech-router.",
        "2. Write a fleet.yaml that lists your GPU nodes, e.g. http://10.0.0.5:8000.",
        "3. Start the router and open http://localhost:8000/health in a browser.",
        "The router checks every node once a second.",
        "If a node fails three times in a row, it is ejected for 30 seconds and traffic moves to the others.",
        "部署步骤： - 安装依赖； - 启动服务。",
    ]
    assert split_sentences("Overview\nThe router keeps a\nlist of nodes. It checks them.\n第一段没有句号\n第二段也没有") == [
        "Overview", "The router keeps a list of nodes.", "It checks them.", "第一段没有句号", "第二段也没有",
    ]


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert split_sentences('他说："好。"然后他走了。') == ['他说："好。"', "然后他走了。"]
    assert split_sentences("“你好！”他说。") == ["“你好！”", "他说。"]
    assert split_sentences('He said "yes." Then he left.') == ['He said "yes."', "Then he left."]
    assert split_sentences("It was cold (see above.) We left.") == ["It was cold (see above.)", "We left."]


def test_abbreviations_numbers_and_ellipses_are_not_sentence_ends() -> None:
    text = ("Dr. Smith met Mr. Lee at 9 a.m. on Jan. 5 near the U.S. Army museum. They talked about No. 5, "
            "e.g. its price, etc. and left. It cost 3.14 dollars, i.e. 1,000 cents less than in 2020. "
            "See Fig. 2 for details.")
    assert split_sentences(text) == [
        "Dr. Smith met Mr. Lee at 9 a.m. on Jan. 5 near the U.S. Army museum.",
        "They talked about No. 5, e.g. its price, etc. and left.",
        "It cost 3.14 dollars, i.e. 1,000 cents less than in 2020.",
        "See Fig. 2 for details.",
    ]
    assert split_sentences("Wait... then he came back. Wait... He came back.") == [
        "Wait... then he came back.", "Wait...", "He came back.",
    ]
    assert split_sentences("他犹豫了……最后还是去了。") == ["他犹豫了……", "最后还是去了。"]


def test_empty_and_blank_text() -> None:
    assert split_segments("") == []
    assert split_segments("  \n\n\t\u3000\n") == []
    assert split_sentences(" \n ") == []


def test_text_shorter_than_min_is_one_segment() -> None:
    assert split_segments("你好。") == ["你好。"]
    assert split_segments("Hi. Bye.") == ["Hi. Bye."]


def test_short_sentences_merge_only_within_max() -> None:
    text = "Yes. No. Maybe so. I think that is right. Fine."
    assert split_segments(text) == [text]
    assert split_segments(text, max_chars=25) == ["Yes. No. Maybe so.", "I think that is right.", "Fine."]
    assert split_segments(text, max_chars=25, min_chars=0) == [
        "Yes.", "No.", "Maybe so.", "I think that is right.", "Fine.",
    ]


def test_long_chinese_sentence_without_punctuation_is_cut_between_characters() -> None:
    text = ("人工智能技术的快速发展正在深刻改变着我们的生活方式和工作方式从智能手机上的语音助手到自动驾驶汽车"
            "再到医疗诊断系统人工智能已经渗透到社会的各个角落在2026年11月24日举行的大会上专家们讨论了GPU集群的"
            "调度问题以及如何在保证服务质量的前提下降低推理成本")
    assert split_segments(text, max_chars=40) == [
        "人工智能技术的快速发展正在深刻改变着我们的生活方式和工作方式从智能手机上的语音助",
        "手到自动驾驶汽车再到医疗诊断系统人工智能已经渗透到社会的各个角落在",  # not inside the date
        "2026年11月24日举行的大会上专家们讨论了GPU集群的调度问题",
        "以及如何在保证服务质量的前提下降低推理成本",  # a tail of at least min_chars
    ]


def test_long_english_sentence_without_punctuation_is_cut_at_spaces() -> None:
    text = ("the quick brown fox jumps over the lazy dog while the router keeps every node of the fleet busy and "
            "the operators watch the dashboards that show latency and throughput for each model and each pool "
            "of servers across the data centre")
    segments = split_segments(text, max_chars=50)
    assert " ".join(segments) == text
    assert segments[:2] == [
        "the quick brown fox jumps over the lazy dog while", "the router keeps every node of the fleet busy and",
    ]
    assert all(len(segment) <= 50 for segment in segments)


def test_small_max_never_cuts_a_token() -> None:
    text = "See https://example.com/a.b?c=d and call 555-0100 at 10:30, or mail ops@example.com."
    assert split_segments(text, max_chars=10, min_chars=0) == [
        "See", "https://example.com/a.b?c=d", "and call", "555-0100", "at 10:30,", "or mail", "ops@example.com.",
    ]
    text = "价格从1,000元涨到了1,250元，涨幅约为25.0%，时间是2026年11月24日10:30。"
    assert split_segments(text, max_chars=8, min_chars=0) == [
        "价格从1,000", "元涨到了", "1,250元，", "涨幅约为", "25.0%，", "时间是", "2026年11月24日10:30。",
    ]


def test_pieces_without_speech_are_merged_or_dropped() -> None:
    assert split_segments("好。\n\n***\n\n对。", min_chars=0) == ["好。 ***", "对。"]
    assert split_segments("……！？\n——") == []


def test_limits_are_checked_and_match_the_config_defaults() -> None:
    with pytest.raises(ValueError):
        split_segments("text", max_chars=0)
    config = FanoutConfig()
    assert (DEFAULT_MAX_CHARS, DEFAULT_MIN_CHARS) == (config.max_segment_chars, config.min_segment_chars)
