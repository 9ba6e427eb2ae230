"""How the services are put together: imported only when run, handlers declared per agent, and
the command client's replies read like every other record."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from edpo.config import WORKERS, Settings
from edpo.models import DeliveryCompleted, GoodsPacked, GoodsPicked, PackGoods, PackingRejected, encode
from edpo.runtime.app import ServiceApp
from edpo.runtime.commands import CommandClient
from edpo.topics import factory_commands_topic


def _modules_loaded_by(code: str) -> set[str]:
    """The edpo.agents.* modules a fresh interpreter has loaded after running code."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                          "print('\\n'.join(m for m in sys.modules if m.startswith('edpo.agents.')))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_edpo_agents_imports_no_service() -> None:
    assert _modules_loaded_by("import edpo.agents") == set()


def test_a_warehouse_worker_loads_neither_the_order_service_nor_the_monitor() -> None:
    loaded = _modules_loaded_by("from edpo import agents\nfrom edpo.config import Settings\n"
                                "agents.create_app('warehouse', Settings())")
    assert "edpo.agents.warehouse" in loaded
    assert not {m for m in loaded if m.split(".")[2] in set(WORKERS) - {"warehouse"}}, loaded


def test_an_agent_with_a_handler_for_a_type_none_of_its_topics_carries_is_refused() -> None:
    app = ServiceApp("factory", Settings())

    async def handle(msg: object) -> None: ...

    with pytest.raises(ValueError, match="DeliveryCompleted"):
        app.agent_over("production", {DeliveryCompleted: handle}, factory_commands_topic)


async def test_the_command_client_answers_a_request_only_with_a_reply_it_waits_for() -> None:
    async def publish(*messages: object, wait: bool = False) -> None: ...

    client = CommandClient("nowhere:9092", publish, [], timeout=1, attempts=1)
    command = PackGoods(order_id="o-1")
    answer: asyncio.Future = asyncio.get_running_loop().create_future()
    client._waiting[command.id] = (answer, (GoodsPacked, PackingRejected))
    client._dispatch("warehouse-events", b"not json")
    client._dispatch("warehouse-events", encode(GoodsPicked(order_id="o-1", correlation_id=command.id)))
    assert not answer.done(), "progress caused by the command shares its correlation id but does not answer it"
    packed = GoodsPacked(order_id="o-1", correlation_id=command.id)
    client._dispatch("warehouse-events", encode(packed))
    assert answer.result() == packed


def test_edpo_up_starts_every_service_per_instance_and_one_monitor() -> None:
    from edpo.config import workers_to_start

    started = workers_to_start(3)
    assert [n for kind, n in started if kind == "monitor"] == [1]
    assert sorted(started) == sorted([(kind, n) for kind in WORKERS if kind != "monitor" for n in (1, 2, 3)]
                                     + [("monitor", 1)])
