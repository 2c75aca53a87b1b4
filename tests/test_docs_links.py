"""Every relative link and image in README.md and docs/*.md points at a file that exists, and every
`#anchor` into a Markdown file names one of its headings (GitHub's heading slugs)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

#: [text](target) and ![alt](target), target up to the first space or ")" (an optional "title" follows).
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str, inline_code: bool = False) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks; inline code removed unless
    `inline_code` (a heading's anchor keeps its code's text)."""
    lines, in_code = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append((number, line if inline_code else re.sub(r"`[^`]*`", "``", line)))
    return lines


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in a Markdown file, outside code."""
    return [(n, m.group(1)) for n, line in prose_lines(path.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces -> "-"."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeated headings get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8"), inline_code=True):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        k = seen.get(base, 0)
        seen[base] = k + 1
        found.add(base if k == 0 else f"{base}-{k}")
    return found


def broken_links(path: Path) -> list[str]:
    """What is wrong with the relative links of one page ("line N: target: why"), empty when all resolve."""
    problems = []
    for number, target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"line {number}: {target}: {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest} "
                            "does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"line {number}: {target}: {dest.name} has no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page) == [], f"{page.relative_to(REPO)} has broken links"


def test_the_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "b.md").write_text("# Some `code` heading, here\n\n## Again\n## Again\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md#some-code-heading-here) [ok](b.md#again-1) ![img](missing.png)\n"
                    "[bad](b.md#nowhere) [web](https://example.com/x.png) `[code](nothing.md)`\n"
                    "```\n[fenced](nothing.md)\n```\n", encoding="utf-8")
    assert links(page) == [(1, "b.md#some-code-heading-here"), (1, "b.md#again-1"), (1, "missing.png"),
                           (2, "b.md#nowhere"), (2, "https://example.com/x.png")]
    problems = broken_links(page)
    assert len(problems) == 2
    assert "missing.png" in problems[0] and "does not exist" in problems[0]
    assert "#nowhere" in problems[1]


def test_the_readme_shows_the_demo_and_a_comfyui_screenshot_and_keeps_the_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    images = [t for _, t in links(REPO / "README.md") if t.endswith(".png")]
    assert any(t.startswith("docs/demo/") for t in images), "README shows no demo picture"
    assert any(t.startswith("docs/images/comfyui_") for t in images), "README shows no ComfyUI screenshot"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in ci and "python -m pytest -q" in readme  # .ci/run runs the README's command
    assert "fdfo demo --out" in readme
