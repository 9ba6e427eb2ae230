"""The delivery service: its Faust app, agents, tables and web views."""

from __future__ import annotations

from edpo.agents.runtime import service_app

app = service_app("delivery")
