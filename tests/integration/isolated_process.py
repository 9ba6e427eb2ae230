"""A copy of the order_fulfilment model with its own process key and task topics.

The real workers (running during `make test` for the end-to-end tests) serve
`order_fulfilment`, never this copy, so tests can play every worker themselves.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from edpo.camunda import ORDER_FULFILMENT, ORDER_FULFILMENT_BPMN

KEY = f"{ORDER_FULFILMENT}_isolated_test"
TOPIC_PREFIX = "isolated-test-"
DEPLOYMENT = "edpo-order-fulfilment-isolated-test"


def model_copy(key: str, topic_prefix: str) -> Path:
    """The order_fulfilment model under another process key, its task topics prefixed."""
    text = ORDER_FULFILMENT_BPMN.read_text()
    assert f'id="{ORDER_FULFILMENT}"' in text
    text = text.replace(f'id="{ORDER_FULFILMENT}"', f'id="{key}"')
    text = re.sub(r'camunda:topic="([a-z-]+)"', lambda m: f'camunda:topic="{topic_prefix}{m.group(1)}"', text)
    path = Path(tempfile.gettempdir()) / f"{key}.bpmn"
    path.write_text(text)
    return path


BPMN = model_copy(KEY, TOPIC_PREFIX)

# What the order service also sets at start (the deadlines and the dispatchers' form texts):
# long timers, so they never fire in a test that does not exercise them.
QUIET_DEADLINES = {"delivery_timeout": "PT1H", "stock_timeout": "PT1H", "order_deadline": "PT1H",
                   "order_summary": "1 x A to Main Street 1", "order_history": "", "missing_summary": ""}
