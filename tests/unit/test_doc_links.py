"""Links between the documents resolve: every relative markdown link in README.md, docs/*.md and
benchmarks/RESULTS.md points at a file inside the repository and, when it names a heading (`#anchor`), at
a heading of that page with that anchor (GitHub's rule: lower case, punctuation dropped, spaces to
hyphens, `-1`, `-2` for repeats). A plain mention of a document (`docs/NAME.md`) must name one that exists.
Fenced code blocks are not read."""
from __future__ import annotations

import re
from pathlib import Path

from tests.support import REPO

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_DOC_MENTION = re.compile(r"(?<![\w./-])docs/[\w.-]+\.md")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]


def prose(page: Path) -> str:
    return _FENCE.sub("", page.read_text())


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for title in _HEADING.findall(prose(page)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
        slug = re.sub(r"[^\w\- ]", "", text.lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path, repo: Path = REPO) -> list[str]:
    wrong = []
    text = prose(page)
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        where = page.relative_to(repo)
        dest = (page.parent / path).resolve() if path else page.resolve()
        if not dest.is_relative_to(repo.resolve()):
            wrong.append(f"{where}: {target} points outside the repository")
        elif not dest.exists():
            wrong.append(f"{where}: {target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            wrong.append(f"{where}: {target}: no heading with that anchor")
    for mention in _DOC_MENTION.findall(text):
        if not (repo / mention).exists():
            wrong.append(f"{page.relative_to(repo)}: {mention} does not exist")
    return wrong


def test_every_relative_link_and_anchor_resolves():
    wrong = [problem for page in pages() for problem in broken_links(page)]
    assert not wrong, "\n".join(wrong)


def test_the_check_finds_a_missing_file_a_missing_anchor_and_a_link_out(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "B.md").write_text("# B\n\n## Two words, `code` here\n")
    page = tmp_path / "docs" / "A.md"
    page.write_text("# A\n[ok](B.md#two-words-code-here) [self](#a) [gone](C.md) [bad](B.md#nope)\n"
                    "[out](../../x.md) docs/B.md docs/Gone.md\n```\n[in a block](Nowhere.md)\n```\n")
    assert broken_links(page, tmp_path) == [
        "docs/A.md: C.md: no such file",
        "docs/A.md: B.md#nope: no heading with that anchor",
        "docs/A.md: ../../x.md points outside the repository",
        "docs/A.md: docs/Gone.md does not exist",
    ]
