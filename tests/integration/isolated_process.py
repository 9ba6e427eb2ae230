"""A copy of the order_fulfilment model with its own process key and task topics.

The real workers (running during `make test` for the end-to-end tests) serve
`order_fulfilment`, never this copy, so tests can play every worker themselves.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

SOURCE_BPMN = Path(__file__).resolve().parents[2] / "edpo" / "camunda" / "order_fulfilment.bpmn"
KEY = "order_fulfilment_isolated_test"
TOPIC_PREFIX = "isolated-test-"
DEPLOYMENT = "edpo-order-fulfilment-isolated-test"


def _isolated_model() -> Path:
    text = SOURCE_BPMN.read_text()
    assert 'id="order_fulfilment"' in text
    text = text.replace('id="order_fulfilment"', f'id="{KEY}"')
    text = re.sub(r'camunda:topic="([a-z-]+)"', lambda m: f'camunda:topic="{TOPIC_PREFIX}{m.group(1)}"', text)
    path = Path(tempfile.gettempdir()) / f"{KEY}.bpmn"
    path.write_text(text)
    return path


BPMN = _isolated_model()
