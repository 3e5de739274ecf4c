# SPDX-License-Identifier: GPL-2.0-only
"""Every command, option and exit code the CLI has is documented somewhere
in README.md or docs/*.md, and every docs page is linked from the README.

Read from the parser itself (``cli.build_parser()`` with every command), so a
new option without documentation fails here, naming it.  Hidden options
(``help=argparse.SUPPRESS``: debug aids for the tests) are exempt."""

from __future__ import annotations

import argparse
import re

from conftest import ROOT

from kvmpv import cli, errors


def _docs_text() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(p.read_text() for p in pages if p.exists())


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_surface() -> dict[str, list[str]]:
    """command -> its documented options (long spellings; short ones if no long)."""
    parser = cli.build_parser()
    out: dict[str, list[str]] = {}
    for name, sub in _subparsers(parser).items():
        opts: list[str] = []
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            if action.option_strings == ["-h", "--help"]:
                continue
            longs = [o for o in action.option_strings if o.startswith("--")]
            opts.append((longs or action.option_strings)[0])
        out[name] = opts
    return out


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_every_command_and_option_is_documented() -> None:
    text = _docs_text()
    missing = []
    for command, options in cli_surface().items():
        if not _mentions(text, f"kvmpv {command}"):
            missing.append(f"kvmpv {command}")
        missing += [f"kvmpv {command} {o}" for o in options if not _mentions(text, o)]
    assert not missing, f"not in README.md or docs/*.md: {missing}"


def test_every_exit_code_is_documented() -> None:
    text = _docs_text()
    codes = sorted(
        {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    )
    assert {0, 1, 2, 3, 4, 70} <= set(codes)
    undocumented = [c for c in codes if not re.search(rf"^\|\s*{c}\s*\|", text, re.MULTILINE)]
    assert not undocumented, f"exit codes without a row in an exit-code table: {undocumented}"


def test_the_check_can_fail() -> None:
    """An option no page mentions is reported by name."""
    assert not _mentions(_docs_text(), "--no-such-option-anywhere")
    assert _mentions("use `--cgroup v2`", "--cgroup")
    assert not _mentions("use `--cgroup-x`", "--cgroup")


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    unlinked = [p for p in pages if f"docs/{p}" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
