"""Write a benchmark's generated block into bench/README.md, keeping the hand-written text around it."""

from __future__ import annotations

from pathlib import Path


def write_block(path: Path, block: str, *, begin: str, end: str, section: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``path``; append ``section`` with it when they are missing."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    generated = f"{begin}\n{block.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + generated + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{generated}\n"
    path.write_text(text, encoding="utf-8")


def publish(text: str, out: str | None, marker: str, section: str) -> None:
    """Print a benchmark's report, and write it into ``out`` between the ``marker`` comments when given."""
    print(text)
    if out:
        write_block(Path(out), text, begin=f"<!-- {marker}:begin -->", end=f"<!-- {marker}:end -->", section=section)
