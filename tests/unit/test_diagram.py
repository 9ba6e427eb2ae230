"""The process model's diagram is generated from edpo/dev/diagram.py and drawn into docs/."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from edpo.camunda import ORDER_FULFILMENT_BPMN
from edpo.dev.diagram import NS, SVG, Model, layout, svg, with_diagram


def test_the_model_carries_the_generated_diagram_and_the_picture_is_current() -> None:
    text = ORDER_FULFILMENT_BPMN.read_text()
    assert with_diagram(text) == text, "run `make docs` (python -m edpo.dev.diagram)"
    assert SVG.read_text() == svg(text), "run `make docs` (python -m edpo.dev.diagram)"


def test_every_element_and_flow_of_the_process_has_a_shape_or_an_edge() -> None:
    root = ET.fromstring(ORDER_FULFILMENT_BPMN.read_text())
    model = Model.parse(ORDER_FULFILMENT_BPMN.read_text())
    shapes = {s.get("bpmnElement") for s in root.iter(f"{{{NS['bpmndi']}}}BPMNShape")}
    edges = {e.get("bpmnElement") for e in root.iter(f"{{{NS['bpmndi']}}}BPMNEdge")}
    assert set(model.kinds) == shapes
    assert set(model.flows) | set(model.associations) == edges


def test_flows_run_straight_or_at_right_angles_from_border_to_border() -> None:
    model = Model.parse(ORDER_FULFILMENT_BPMN.read_text())
    boxes, edges = layout(model)
    for fid, points in edges.items():
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            assert x0 == x1 or y0 == y1, f"{fid} has a slanted segment {points}"
        if fid in model.flows:
            src, tgt, _ = model.flows[fid]
            for (x, y), box in ((points[0], boxes[src]), (points[-1], boxes[tgt])):
                on_border = (box.x - 1 <= x <= box.x + box.w + 1) and (box.y - 1 <= y <= box.y + box.h + 1)
                assert on_border, f"{fid} does not touch {box}"


def test_user_tasks_are_for_dispatchers_with_a_decision_field_where_a_path_depends_on_it() -> None:
    root = ET.fromstring(ORDER_FULFILMENT_BPMN.read_text())
    tasks = {t.get("id"): t for t in root.iter(f"{{{NS['bpmn']}}}userTask")}
    assert set(tasks) == {"resolve-overdue-delivery", "decide-delayed-order", "investigate-order"}
    for key, task in tasks.items():
        assert task.get(f"{{{NS['camunda']}}}candidateGroups") == "dispatchers", key
    decisions = {key: [v.get("id") for f in t.iter(f"{{{NS['camunda']}}}formField") if f.get("id") == "decision"
                       for v in f.iter(f"{{{NS['camunda']}}}value")] for key, t in tasks.items()}
    assert decisions == {"resolve-overdue-delivery": ["wait", "retry", "cancel"],
                         "decide-delayed-order": ["wait", "cancel"], "investigate-order": []}
