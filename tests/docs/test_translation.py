"""README.zh-CN.md is a complete translation of README.md, kept in step with it.

Code is never translated, so the two files must have the same code blocks (with their ``readme-test`` lines),
in the same order; ``tests/docs/test_readme.py`` runs README's, so the Chinese reader's commands are tested
too. A translation that drops a section, a table row, a link or a sentence with a setting in it fails the
other checks: the same headings at the same levels, the same table shapes, the same links and the same inline
code (`server.port`, `x-speech-router-attempts`, ...), each as many times.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from tests.docs.test_readme import blocks

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CHINESE = REPO / "README.zh-CN.md"
#: the two files link to each other at the top and in the tests paragraph
MUTUAL = {README.name, CHINESE.name}


def prose(path: Path) -> str:
    """The text outside code blocks, with lines joined (an inline code span may wrap)."""
    text = re.sub(r"^```.*?^```$", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return text.replace("\n", " ")


def headings(path: Path) -> list[int]:
    text = re.sub(r"^```.*?^```$", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return [len(m.group(1)) for m in re.finditer(r"^(#+) \S", text, flags=re.MULTILINE)]


def tables(path: Path) -> list[int]:
    """The cell count of every table row, in order."""
    return [line.count("|") for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("|")]


def test_the_code_blocks_are_the_same_and_in_the_same_order():
    english = [(b.kind, b.lang, b.body) for b in blocks(README)]
    chinese = [(b.kind, b.lang, b.body) for b in blocks(CHINESE)]
    assert len(english) >= 12
    for i, (en, zh) in enumerate(zip(english, chinese, strict=False)):
        assert en == zh, f"block {i + 1} differs: README.md {en[:2]}, README.zh-CN.md {zh[:2]}"
    assert len(english) == len(chinese)


def test_the_same_sections_and_tables():
    assert headings(README) == headings(CHINESE)
    assert tables(README) == tables(CHINESE)


def test_the_same_links_and_inline_code():
    def links(path: Path) -> Counter[str]:
        found = re.findall(r"\]\(([^)#][^)]*)\)", prose(path))
        return Counter(link for link in found if link not in MUTUAL)

    def code(path: Path) -> Counter[str]:
        return Counter(re.findall(r"`([^`]+)`", prose(path)))

    assert links(README) == links(CHINESE)
    missing, extra = code(README) - code(CHINESE), code(CHINESE) - code(README)
    assert not missing and not extra, f"inline code only in README.md: {dict(missing)}; only in the translation: " \
                                      f"{dict(extra)}"


def test_each_file_links_to_the_other_at_the_top():
    assert f"]({CHINESE.name})" in README.read_text(encoding="utf-8").split("\n## ")[0]
    assert f"]({README.name})" in CHINESE.read_text(encoding="utf-8").split("\n## ")[0]
    assert re.search(r"[\u4e00-\u9fff]{200}", re.sub(r"[^\u4e00-\u9fff]", "", prose(CHINESE))), "it is Chinese"
