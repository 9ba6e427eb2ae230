"""Print the reliability table (docs/reliability.md) from the last `make test-faults` run.

    .venv/bin/python -m tests.faults.report [.run/faults/results.tsv]

Each passing scenario appended one row: fault, orders, delivered, cancelled, stuck,
duplicated, invariant violations (a scenario with any of the last three fails instead, so
they are zero in every row written), and the recovery figures it measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADER = ("| Fault | Orders in flight | Completed (delivered + cancelled) | Stuck | Duplicated | "
          "Invariant violations | Time to recover |\n|---|---|---|---|---|---|---|")


def table(path: Path) -> str:
    rows = []
    for line in path.read_text().splitlines():
        name, orders, delivered, cancelled, stuck, dup, broken, figures = line.split("\t")
        done = int(delivered) + int(cancelled)
        rows.append(f"| {name} | {orders} | {done} ({delivered} + {cancelled}) | {stuck} | {dup} | {broken} | "
                    f"{_recovery(figures)} |")
    return "\n".join([HEADER, *rows])


def _recovery(figures: str) -> str:
    values = dict(item.split("=") for item in figures.split())
    labels = {"crash_after_s": "crashed {}s in", "restart_ready_s": "worker ready {}s after restart",
              "server_ready_s": "server ready {}s after restart", "join_s": "2nd workers ready in {}s",
              "rejoin_ready_s": "killed worker ready {}s after restart",
              "drain_s": "all orders final {}s after recovery", "dead_letters": "{} dead letters",
              "replay_s": "replayed in {}s", "cancels_accepted": "{} cancellations accepted",
              "cancels_refused": "{} refused (shipped)"}
    return "; ".join(labels[k].format(v) for k, v in values.items() if k in labels)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else ".run/faults/results.tsv")))
