"""README.md stays one page, its short answer is the study's generated table, and its links and commands are live.

``python tests/test_readme.py --write`` rewrites README's short-answer block from the results.json its begin marker
names (run it after regenerating a study); the tests below fail until it has been run.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from dcjax import checkpoint
from dcjax.privacy import results_schema, tables

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 150
# The README's block: the begin marker names the results.json (relative to the repository root) it is made from.
BLOCK = re.compile(r"(<!-- short-answer:begin (\S+) -->\n)(.*?)(<!-- short-answer:end -->)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```bash\n(.*?)\n```", re.DOTALL)


def _expected_block(text: str) -> tuple[re.Match, str]:
    """The short-answer block's match in ``text`` and what it must hold."""
    match = BLOCK.search(text)
    if match is None:
        raise ValueError("README.md: no <!-- short-answer:begin FILE --> ... <!-- short-answer:end --> block")
    return match, tables.short_table(results_schema.read_study(str(ROOT / match.group(2))))  # Errors name the file.


def write_short_answer(path: Path = README) -> bool:
    """Rewrites the block in ``path`` in place (atomically); True if it changed."""
    text = path.read_text(encoding="utf-8")
    match, block = _expected_block(text)
    new = text[: match.start(3)] + block + text[match.end(3) :]
    if new != text:
        checkpoint.atomic_write_bytes(str(path), new.encode("utf-8"))
    return new != text


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    """Relative links in a markdown file whose file (or, for a .md file, #heading) does not exist."""
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline.
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file) if file else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"(?m)^#+ (.*)$", resolved.read_text(encoding="utf-8"))
            if anchor not in {_slug(h) for h in headings}:
                broken.append(target)
    return broken


def _two_commands(text: str) -> list[str]:
    """The bash blocks of README's "Two commands" section."""
    section = text.split("## Two commands, on a fresh machine\n", 1)[1].split("\n## ", 1)[0]
    return FENCE.findall(section)


def test_readme_is_one_page():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines (at most {MAX_LINES}): move detail into docs/"


def test_the_short_answer_is_the_studys_generated_table():
    match, block = _expected_block(README.read_text(encoding="utf-8"))
    assert match.group(3) == block, (
        f"README's short answer is stale; run `python tests/test_readme.py --write`, or paste:\n{block}"
    )


def test_the_writer_replaces_only_the_block(tmp_path):
    match, block = _expected_block(README.read_text(encoding="utf-8"))
    stale = f"before\n{match.group(1)}| stale |\n{match.group(4)}\nafter\n"
    path = tmp_path / "README.md"
    path.write_text(stale, encoding="utf-8")
    assert write_short_answer(path) and not write_short_answer(path)
    assert path.read_text(encoding="utf-8") == f"before\n{match.group(1)}{block}{match.group(4)}\nafter\n"


def test_relative_links_point_to_existing_files():
    for path in (README, ROOT / "docs" / "RESULTS.md", ROOT / "docs" / "SPEED.md"):
        assert broken_links(path) == [], f"{path.relative_to(ROOT)}: broken links"


def test_the_link_check_can_fail(tmp_path):
    (tmp_path / "there.md").write_text("# A heading (here)\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md#a-heading-here) [gone](missing.png) [bad](there.md#nowhere) [web](https://x.org/y)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.png", "there.md#nowhere"]


def test_the_two_commands_are_what_ci_runs():
    setup, tests = _two_commands(README.read_text(encoding="utf-8"))
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci = [line for line in ci_lines if line.startswith("python3")]
    assert ci == [tests], ".ci/run must run README's test command, byte for byte"
    # The first command installs the same way and runs a launcher on a flagfile that exists.
    assert setup.split(" -e ")[0] == tests.split(" -e ")[0]
    flagfile = next(arg.split("=", 1)[1] for arg in shlex.split(setup) if arg.startswith("--flagfile="))
    assert os.path.isfile(ROOT / flagfile), flagfile


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_readme.py --write  (refreshes README.md's short answer)")
    print("README.md: short answer " + ("rewritten" if write_short_answer() else "already up to date"))
