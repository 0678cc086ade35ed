"""The README is a user's guide that fits in 200 lines, and every relative link in it and in docs/
leads somewhere: the file exists and, for `file.md#anchor` or `#anchor`, a heading of that file has
the anchor (GitHub's rule: lower-case, punctuation dropped except hyphens and underscores, spaces
to hyphens, `-1`, `-2` ... for repeats). Every server setting is listed in docs/settings.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README_MAX_LINES = 200

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
# [text](target) and ![alt](target), with an optional "title"; and reference definitions [x]: target
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return INLINE_LINK.findall(text) + REF_DEFINITION.findall(text)


def broken_links(path: Path) -> list[str]:
    """Each relative link of a markdown file that does not resolve, with the reason."""
    problems = []
    for target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: {target} -> no such file {dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{path.name}: {target} -> no heading with anchor #{anchor} in {dest.name}")
    return problems


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path):
    assert links(path) or path.name != "README.md", "the README links to its docs"
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert [p.name for p in pages if p.resolve() not in linked] == []


def test_the_checker_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path):
    (tmp_path / "other.md").write_text(
        "# Other page\n\n## Limits and errors (§2)\n\n## Limits and errors (§2)\n"
    )
    good = "[a](other.md) [b](other.md#limits-and-errors-2) [c](other.md#limits-and-errors-2-1) [d](#top)"
    external = "[e](https://example.com/x.md) [f](mailto:a@b.c) `[g](nowhere.md)`"
    (tmp_path / "page.md").write_text(f"# Top\n\n{good} {external}\n\n```\n[h](nowhere.md)\n```\n")
    assert broken_links(tmp_path / "page.md") == []
    (tmp_path / "page.md").write_text("# Top\n\n[a](gone.md) [b](other.md#limits) [c](#nope)\n")
    problems = broken_links(tmp_path / "page.md")
    assert len(problems) == 3
    assert "no such file" in problems[0] and "#limits" in problems[1] and "#nope" in problems[2]


def test_every_setting_is_listed_in_docs_settings():
    from app.server.settings import Settings

    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    prefix = Settings.model_config.get("env_prefix", "")
    missing = [
        f"{prefix}{name.upper()}" for name in Settings.model_fields if f"`{prefix}{name.upper()}`" not in text
    ]
    assert missing == []
