"""Camunda 7: the BPMN process of EDPO, the engine's REST client and the external-task worker.

(A package of this name nested in `edpo`, because the client library installs a top-level
package called `camunda`.)
"""

from pathlib import Path

# The order process: deployed by the order service, one instance per order (business key = order id).
ORDER_FULFILMENT_BPMN = Path(__file__).resolve().parent / "order_fulfilment.bpmn"
ORDER_FULFILMENT = "order_fulfilment"
