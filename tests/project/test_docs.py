"""Docs that are generated from code must match the code."""

from __future__ import annotations

from pathlib import Path

from switchboard.cli.settings_doc import markdown

ROOT = Path(__file__).resolve().parents[2]


def test_settings_table_in_docs_is_current() -> None:
    assert markdown() in (ROOT / "docs" / "edge.md").read_text(), (
        "docs/edge.md is stale: regenerate with `switchboard settings --markdown`"
    )
