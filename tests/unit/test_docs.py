"""The documents generated from code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from edpo.config import settings_table_markdown
from edpo.topics import catalog_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_configuration_table_lists_every_setting() -> None:
    assert settings_table_markdown() in (ROOT / "README.md").read_text(), "run `edpo config` and paste the table"


def test_message_catalog_matches_the_declared_topics() -> None:
    assert (ROOT / "docs" / "messages.md").read_text() == catalog_markdown(), "run `make docs`"
