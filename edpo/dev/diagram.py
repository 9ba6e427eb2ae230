"""The order process's diagram: where each element sits, and a picture drawn from the model.

The process semantics are written by hand in `edpo/camunda/order_fulfilment.bpmn`. Where its
elements sit is declared here, on a grid (columns left to right, rows top to bottom, row 0 is
the main line), with the route of every flow that is not a plain straight or L-shaped line.
`python -m edpo.dev.diagram` (run by `make docs`) rewrites the model's diagram interchange
from this layout, so Camunda Modeler and Cockpit show the same picture, and draws
`docs/order_fulfilment.svg` from the model. tests/unit/test_diagram.py checks both are current
and that every element of the process has a place.
"""

from __future__ import annotations

import html
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from edpo.camunda import ORDER_FULFILMENT, ORDER_FULFILMENT_BPMN

SVG = Path(__file__).resolve().parents[2] / "docs" / "order_fulfilment.svg"

NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "camunda": "http://camunda.org/schema/1.0/bpmn",
}
B = "{%s}" % NS["bpmn"]

# Grid: centre of column c and row r, in diagram pixels.
X0, DX, Y0, DY = 160, 125, 330, 115

# Flow nodes: (column, row) of their centre.
NODES: dict[str, tuple[float, float]] = {
    # main line
    "StartEvent_OrderAccepted": (0, 0), "Task_ReserveStock": (1, 0), "Gateway_ReservationResult": (2, 0),
    "Catch_StockReserved": (3, 0), "Gateway_ReplenishAfterAll": (4.5, 0), "Task_ReplaceTakenUnits": (6, -1),
    "Gateway_StockReady": (8, 0), "Task_PackGoods": (9, 0),
    "Gateway_DeliveryLoop": (10, 0), "Task_StartDelivery": (11, 0), "Gateway_DeliveryWaitLoop": (12, 0),
    "Gateway_DeliveryOutcome": (13, 0), "Catch_DeliveryCompleted": (14, 0), "EndEvent_OrderDelivered": (19, 0),
    # compensation handler of "Reserve stock"
    "Task_ReleaseStock": (1, 1.4),
    # partial reservation, waiting for stock, the dispatcher's decision
    "Catch_StockPartiallyReserved": (3, 1), "Task_RequestReplenishment": (4, 1), "Gateway_StockWaitLoop": (5, 1),
    "Gateway_StockWait": (6, 1), "Catch_WaitForStock": (7, 1), "Timer_StockOverdue": (6, 2),
    "decide-delayed-order": (7, 2), "Gateway_StockDecision": (8, 2),
    # failed delivery, retries, cancellation
    "Catch_DeliveryFailed": (13, 1), "Gateway_AttemptsLeft": (15, 1), "Timer_RetryBackoff": (12, 1.75),
    "Gateway_Cancel": (16, 1), "Throw_Compensate": (17, 1), "Task_CancelOrder": (18, 1),
    "EndEvent_OrderCancelled": (19, 1),
    # overdue delivery (above the main line)
    "Timer_DeliveryOverdue": (13, -1), "resolve-overdue-delivery": (14, -1), "Gateway_OverdueDecision": (15, -1),
    "Task_WithdrawForCancel": (16, -1), "Task_WithdrawForRetry": (15, -2),
    # event subprocess: the customer cancels
    "StartEvent_CancelRequested": (1, 3.6), "Task_WithdrawOnCancel": (2, 3.6), "Task_ReleaseOnCancel": (3, 3.6),
    "Task_CancelOnRequest": (4, 3.6), "EndEvent_CancelledOnRequest": (5, 3.6),
    "EndEvent_DeliveredBeforeCancel": (3, 4.6),
    # event subprocess: the order deadline
    "StartEvent_OrderDeadline": (8, 3.6), "investigate-order": (9, 3.6), "EndEvent_Investigated": (10, 3.6),
}

# Boundary events: (host, side, position along the side 0..1).
BOUNDARIES: dict[str, tuple[str, str, float]] = {
    "Boundary_CompensateReservation": ("Task_ReserveStock", "bottom", 0.5),
    "Boundary_DeliveryRejected": ("Task_StartDelivery", "bottom", 0.7),
    "Boundary_StockArrived": ("decide-delayed-order", "top", 0.8),
    "Boundary_OverdueDelivered": ("resolve-overdue-delivery", "top", 0.7),
    "Boundary_OverdueFailed": ("resolve-overdue-delivery", "bottom", 0.7),
    "Boundary_RetryFoundDelivered": ("Task_WithdrawForRetry", "top", 0.7),
    "Boundary_CancelFoundDelivered": ("Task_WithdrawForCancel", "top", 0.7),
    "Boundary_DeliveredBeforeCancel": ("Task_WithdrawOnCancel", "bottom", 0.5),
}

# Flows that are not straight or L-shaped: the grid points between the source's exit and the
# target's entry ("exit"/"entry" name the sides; default: right -> left, or an L between rows).
ROUTES: dict[str, tuple[str, list[tuple[float, float]], str]] = {
    "Flow_ToStockPartiallyReserved": ("bottom", [(2, 1)], "left"),
    "Flow_ToReplaceTakenUnits": ("top", [(4.5, -1)], "left"),
    "Flow_ReplacedToReady": ("right", [(8, -1)], "top"),
    "Flow_WaitForStockToReady": ("right", [(8, 1)], "bottom"),
    "Flow_StockArrivedToReady": ("top", [(7.3, 0.55), (8, 0.55)], "bottom"),
    "Flow_StockDecisionWait": ("top", [(8, 1.5), (5, 1.5)], "bottom"),
    "Flow_StockDecisionCancel": ("bottom", [(8, 2.45), (16, 2.45)], "bottom"),
    "Flow_RejectedToAttemptsLeft": ("bottom", [(11.2, 1.3), (13.5, 1.3), (13.5, 1)], "left"),
    "Flow_Retry": ("bottom", [(15, 1.75)], "right"),
    "Flow_RetryAfterBackoff": ("left", [(10, 1.75)], "bottom"),
    "Flow_ToDeliveryOverdue": ("top", [], "bottom"),
    "Flow_ToDeliveryFailed": ("bottom", [], "top"),
    "Flow_ToStockOverdue": ("bottom", [], "top"),
    "Flow_OverdueDecisionRetry": ("top", [], "bottom"),
    "Flow_RetryAfterWithdrawal": ("left", [(10, -2)], "top"),
    "Flow_OverdueDecisionWait": ("bottom", [(15, -0.5), (12, -0.5)], "top"),
    "Flow_WithdrawnToCancel": ("bottom", [], "top"),
    "Flow_OverdueDeliveredAfterAll": ("top", [(14.2, -1.55), (19, -1.55)], "top"),
    "Flow_OverdueFailedAfterAll": ("bottom", [(14.2, -0.3), (15, -0.3)], "top"),
    "Flow_RetryFoundDelivered": ("top", [(15.2, -2.55), (19, -2.55)], "top"),
    "Flow_CancelFoundDelivered": ("top", [(16.2, -1.55), (19, -1.55)], "top"),
    "Flow_DeliveredBeforeCancel": ("bottom", [(2, 4.6)], "left"),
}

SIZES = {"task": (100, 80), "event": (36, 36), "gateway": (50, 50)}
SUBPROCESS_PAD = (60, 45)


@dataclass
class Box:
    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    def anchor(self, side: str) -> tuple[float, float]:
        return {"left": (self.x, self.cy), "right": (self.x + self.w, self.cy),
                "top": (self.cx, self.y), "bottom": (self.cx, self.y + self.h)}[side]


def _kind(tag: str) -> str:
    name = tag.removeprefix(B)
    if name.endswith("Task"):
        return "task"
    if name.endswith("Gateway"):
        return "gateway"
    if name == "subProcess":
        return "subprocess"
    return "event"


def _grid(col: float, row: float) -> tuple[float, float]:
    return X0 + col * DX, Y0 + row * DY


@dataclass
class Model:
    """What the drawing needs from the BPMN: elements, their kinds and names, flows."""

    kinds: dict[str, str]
    tags: dict[str, str]
    names: dict[str, str]
    flows: dict[str, tuple[str, str, str]]  # id -> (source, target, name)
    associations: dict[str, tuple[str, str]]
    children: dict[str, list[str]]  # event subprocess -> its elements
    root: ET.Element

    @classmethod
    def parse(cls, text: str) -> Model:
        root = ET.fromstring(text)
        process = root.find("bpmn:process", NS)
        assert process is not None
        kinds, tags, names, flows, assocs, children = {}, {}, {}, {}, {}, {}

        def walk(scope: ET.Element, owner: str | None) -> None:
            for el in scope:
                tag, eid = el.tag, el.get("id", "")
                if tag == B + "sequenceFlow":
                    flows[eid] = (el.get("sourceRef", ""), el.get("targetRef", ""), el.get("name", ""))
                elif tag == B + "association":
                    assocs[eid] = (el.get("sourceRef", ""), el.get("targetRef", ""))
                elif tag.startswith(B) and tag.removeprefix(B) not in ("documentation", "extensionElements",
                                                                       "incoming", "outgoing"):
                    kinds[eid], tags[eid], names[eid] = _kind(tag), tag.removeprefix(B), el.get("name", "")
                    if owner:
                        children.setdefault(owner, []).append(eid)
                    if tag == B + "subProcess":
                        walk(el, eid)

        walk(process, None)
        return cls(kinds, tags, names, flows, assocs, children, root)


def layout(model: Model) -> tuple[dict[str, Box], dict[str, list[tuple[float, float]]]]:
    """Shapes (bounds per element id) and edges (waypoints per flow or association id)."""
    boxes: dict[str, Box] = {}
    for eid, kind in model.kinds.items():
        if kind == "subprocess" or eid in BOUNDARIES:
            continue
        if eid not in NODES:
            raise KeyError(f"{eid} has no place in edpo/dev/diagram.py NODES")
        cx, cy = _grid(*NODES[eid])
        w, h = SIZES[kind]
        boxes[eid] = Box(cx - w / 2, cy - h / 2, w, h)
    for eid, (host, side, at) in BOUNDARIES.items():
        hb = boxes[host]
        if side in ("top", "bottom"):
            cx, cy = hb.x + hb.w * at, hb.y if side == "top" else hb.y + hb.h
        else:
            cx, cy = hb.x if side == "left" else hb.x + hb.w, hb.y + hb.h * at
        boxes[eid] = Box(cx - 18, cy - 18, 36, 36)
    for sub, members in model.children.items():
        inner = [boxes[m] for m in members if m in boxes]
        px, py = SUBPROCESS_PAD
        x0, y0 = min(b.x for b in inner) - px, min(b.y for b in inner) - py
        x1, y1 = max(b.x + b.w for b in inner) + px, max(b.y + b.h for b in inner) + py
        boxes[sub] = Box(x0, y0, x1 - x0, y1 - y0)
    missing = set(model.kinds) - set(boxes)
    if missing:
        raise KeyError(f"no place for {sorted(missing)}")

    edges: dict[str, list[tuple[float, float]]] = {}
    for fid, (src, tgt, _name) in model.flows.items():
        s, t = boxes[src], boxes[tgt]
        if fid in ROUTES:
            exit_side, via, entry = ROUTES[fid]
            start = s.anchor(exit_side)
            end = t.anchor(entry)
            points = [start, *(_grid(c, r) for c, r in via), end]
            # Keep the first and last segments straight: snap the neighbour onto the anchor's axis.
            if via:
                points[1] = (start[0], points[1][1]) if exit_side in ("top", "bottom") else (points[1][0], start[1])
                points[-2] = (end[0], points[-2][1]) if entry in ("top", "bottom") else (points[-2][0], end[1])
        elif abs(s.cy - t.cy) < 1:
            points = [s.anchor("right"), t.anchor("left")]
        else:  # an L: along the source's row, then up or down into the target
            start = s.anchor("right")
            end = t.anchor("top" if t.cy > s.cy else "bottom")
            points = [start, (end[0], start[1]), end]
        edges[fid] = _tidy(points)
    for aid, (src, tgt) in model.associations.items():
        s, t = boxes[src], boxes[tgt]
        edges[aid] = [s.anchor("bottom"), t.anchor("top")]
    return boxes, edges


def _tidy(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Round to whole pixels and drop repeated points."""
    out: list[tuple[float, float]] = []
    for x, y in points:
        p = (round(x), round(y))
        if not out or out[-1] != p:
            out.append(p)
    return out


def _label_box(model: Model, eid: str, box: Box) -> Box | None:
    name = model.names.get(eid)
    if not name or model.kinds[eid] in ("task", "subprocess"):
        return None
    w = 100
    if model.kinds[eid] == "gateway":
        return Box(box.cx - w / 2, box.y - 30, w, 27)
    if eid in BOUNDARIES and BOUNDARIES[eid][1] == "top":
        return Box(box.x + box.w + 2, box.y - 16, w, 27)
    return Box(box.cx - w / 2, box.y + box.h + 5, w, 27)


def diagram_xml(model: Model) -> str:
    """The BPMNDiagram element for the model, as text."""
    boxes, edges = layout(model)
    out = ['  <bpmndi:BPMNDiagram id="BPMNDiagram_OrderFulfilment">',
           f'    <bpmndi:BPMNPlane id="BPMNPlane_OrderFulfilment" bpmnElement="{ORDER_FULFILMENT}">']
    order = sorted(boxes, key=lambda e: model.kinds[e] != "subprocess")  # containers first
    for eid in order:
        b = boxes[eid]
        extra = ""
        if model.kinds[eid] == "subprocess":
            extra = ' isExpanded="true"'
        elif model.tags[eid] == "exclusiveGateway":
            extra = ' isMarkerVisible="true"'
        out.append(f'      <bpmndi:BPMNShape id="{eid}_di" bpmnElement="{eid}"{extra}>')
        out.append(f'        <dc:Bounds x="{b.x:g}" y="{b.y:g}" width="{b.w:g}" height="{b.h:g}" />')
        label = _label_box(model, eid, b)
        if label:
            out.append(f'        <bpmndi:BPMNLabel><dc:Bounds x="{label.x:g}" y="{label.y:g}" '
                       f'width="{label.w:g}" height="{label.h:g}" /></bpmndi:BPMNLabel>')
        out.append("      </bpmndi:BPMNShape>")
    for fid, points in edges.items():
        out.append(f'      <bpmndi:BPMNEdge id="{fid}_di" bpmnElement="{fid}">')
        out += [f'        <di:waypoint x="{x:g}" y="{y:g}" />' for x, y in points]
        name = model.flows.get(fid, ("", "", ""))[2]
        if name:
            x, y = points[0]
            out.append(f'        <bpmndi:BPMNLabel><dc:Bounds x="{x + 6:g}" y="{y + 4:g}" width="40" height="14" />'
                       "</bpmndi:BPMNLabel>")
        out.append("      </bpmndi:BPMNEdge>")
    out += ["    </bpmndi:BPMNPlane>", "  </bpmndi:BPMNDiagram>"]
    return "\n".join(out)


def with_diagram(text: str) -> str:
    """The BPMN text with its diagram interchange regenerated from the layout."""
    new = diagram_xml(Model.parse(text))
    replaced, n = re.subn(r"  <bpmndi:BPMNDiagram.*</bpmndi:BPMNDiagram>", lambda _: new, text, flags=re.S)
    if n != 1:
        raise ValueError("the model has no BPMNDiagram element to replace")
    return replaced


# --- the picture ---------------------------------------------------------------------------------

_ICON = {
    "messageEventDefinition": "\u2709", "timerEventDefinition": "\u25F7", "errorEventDefinition": "\u26A1",
    "compensateEventDefinition": "\u00AB", "terminateEventDefinition": "\u25CF",
}
_GATEWAY = {"exclusiveGateway": "\u2715", "eventBasedGateway": "\u2B20"}


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def _text(x: float, y: float, text: str, width: int, size: int = 11, anchor: str = "middle") -> str:
    lines = _wrap(text, width)
    spans = "".join(f'<tspan x="{x:g}" dy="{0 if i == 0 else size + 2}">{html.escape(t)}</tspan>'
                    for i, t in enumerate(lines))
    return f'<text x="{x:g}" y="{y:g}" font-size="{size}" text-anchor="{anchor}">{spans}</text>'


def svg(text: str) -> str:
    """A picture of the process as the model's diagram interchange places it."""
    model = Model.parse(text)
    boxes, edges = layout(model)
    definitions: dict[str, str] = {}
    process = model.root.find("bpmn:process", NS)
    assert process is not None
    for el in process.iter():
        eid = el.get("id", "")
        for child in el:
            kind = child.tag.removeprefix(B)
            if kind in _ICON:
                definitions[eid] = kind
        if el.tag == B + "userTask":
            definitions[eid] = "user"
        elif el.tag == B + "serviceTask":
            definitions[eid] = "service"
    x0 = min(b.x for b in boxes.values()) - 20
    y0 = min(b.y for b in boxes.values()) - 40
    x1 = max(b.x + b.w for b in boxes.values()) + 60
    y1 = max(b.y + b.h for b in boxes.values()) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x0:g} {y0:g} {x1 - x0:g} {y1 - y0:g}" '
           f'width="{x1 - x0:g}" height="{y1 - y0:g}" font-family="Helvetica, Arial, sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#333"/></marker></defs>',
           f'<rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}" fill="white"/>']
    for eid in sorted(boxes, key=lambda e: model.kinds[e] != "subprocess"):
        b, kind, name = boxes[eid], model.kinds[eid], model.names[eid]
        if kind == "subprocess":
            out.append(f'<rect x="{b.x:g}" y="{b.y:g}" width="{b.w:g}" height="{b.h:g}" rx="12" fill="#fafafa" '
                       'stroke="#555" stroke-dasharray="6 4"/>')
            out.append(_text(b.x + 10, b.y + 18, name, 40, 12, "start"))
        elif kind == "task":
            fill = "#fff6d5" if definitions.get(eid) == "user" else "#eef5ff"
            out.append(f'<rect x="{b.x:g}" y="{b.y:g}" width="{b.w:g}" height="{b.h:g}" rx="10" fill="{fill}" '
                       'stroke="#333"/>')
            icon = "\u263A" if definitions.get(eid) == "user" else "\u2699"
            out.append(f'<text x="{b.x + 6:g}" y="{b.y + 15:g}" font-size="12">{icon}</text>')
            lines = _wrap(name, 14)
            out.append(_text(b.cx, b.cy - (len(lines) - 1) * 6.5 + 4, name, 14, 11))
        elif kind == "gateway":
            pts = f"{b.cx:g},{b.y:g} {b.x + b.w:g},{b.cy:g} {b.cx:g},{b.y + b.h:g} {b.x:g},{b.cy:g}"
            out.append(f'<polygon points="{pts}" fill="white" stroke="#333"/>')
            mark = _GATEWAY.get(model.tags[eid], "")
            out.append(f'<text x="{b.cx:g}" y="{b.cy + 6:g}" font-size="16" text-anchor="middle">{mark}</text>')
        else:
            tag = model.tags[eid]
            width = 3 if tag == "endEvent" else 1
            dash = ' stroke-dasharray="4 3"' if process.find(f".//*[@id='{eid}'][@isInterrupting='false']") is not None else ""
            out.append(f'<circle cx="{b.cx:g}" cy="{b.cy:g}" r="18" fill="white" stroke="#333" '
                       f'stroke-width="{width}"{dash}/>')
            if tag in ("intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent"):
                out.append(f'<circle cx="{b.cx:g}" cy="{b.cy:g}" r="14.5" fill="none" stroke="#333"/>')
            icon = _ICON.get(definitions.get(eid, ""), "")
            if icon:
                out.append(f'<text x="{b.cx:g}" y="{b.cy + 5:g}" font-size="13" text-anchor="middle">{icon}</text>')
        label = _label_box(model, eid, b)
        if label:
            out.append(_text(label.cx, label.y + 10, name, 18, 10))
    for fid, points in edges.items():
        path = " ".join(f"{x:g},{y:g}" for x, y in points)
        if fid in model.associations:
            out.append(f'<polyline points="{path}" fill="none" stroke="#777" stroke-dasharray="3 3" '
                       'marker-end="url(#arrow)"/>')
            continue
        out.append(f'<polyline points="{path}" fill="none" stroke="#333" marker-end="url(#arrow)"/>')
        name = model.flows[fid][2]
        if name:
            x, y = points[0]
            out.append(f'<text x="{x + 6:g}" y="{y + 14:g}" font-size="10" fill="#555">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    """Rewrite the model's diagram from the layout and draw docs/order_fulfilment.svg."""
    text = ORDER_FULFILMENT_BPMN.read_text()
    updated = with_diagram(text)
    if updated != text:
        ORDER_FULFILMENT_BPMN.write_text(updated)
    SVG.write_text(svg(updated))
    print(f"wrote {ORDER_FULFILMENT_BPMN} diagram and {SVG}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
