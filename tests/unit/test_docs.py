"""The documents generated from code stay in step with it."""

from __future__ import annotations

import re
from pathlib import Path

from edpo.config import settings_table_markdown
from edpo.topics import catalog_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_readme_configuration_table_lists_every_setting() -> None:
    assert settings_table_markdown() in (ROOT / "README.md").read_text(), "run `edpo config` and paste the table"


def test_message_catalog_matches_the_declared_topics() -> None:
    assert (ROOT / "docs" / "messages.md").read_text() == catalog_markdown(), "run `make docs`"


def test_timeouts_are_iso_8601_durations_the_engine_can_parse() -> None:
    import pytest
    from pydantic import ValidationError

    from edpo.config import Settings

    for good in ("PT30S", "PT1.5S", "P1D", "PT5M", "P1DT2H"):
        assert Settings(delivery_timeout=good, stock_timeout=good, order_deadline=good).delivery_timeout == good
    for bad in ("30s", "P", "PT", "P1DT", "5"):
        with pytest.raises(ValidationError, match="ISO 8601"):
            Settings(delivery_timeout=bad)


# How many tests, scenarios or requests a run had is a figure of that run: written into a document,
# it goes stale with the next test added. A document names the tests instead; a run reports its own.
STALE_COUNTS = [
    re.compile(r"\b\d[\d,]*\s+(?:[\w-]+\s+)?(?:tests?|scenarios?|test cases)\b", re.IGNORECASE),
    re.compile(r"\b\d[\d,]*\s+(?:passed|failed|skipped|deselected|xfailed)\b"),
    re.compile(r"`test_[^`]*`\s*\(\d+\)"),  # a glob of test names with how many it matches
]


def test_no_document_states_how_many_tests_there_are() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = [f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r}" for path in documents
             for n, line in enumerate(path.read_text().splitlines(), 1)
             for pattern in STALE_COUNTS for m in pattern.finditer(line)]
    assert not found, "counts of tests go stale; name the tests instead:\n" + "\n".join(found)
