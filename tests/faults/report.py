"""Print the reliability table (docs/reliability.md) from the last `make test-faults` run.

    .venv/bin/python -m tests.faults.report [.run/faults/results.tsv]

Every session of tests/faults starts the file afresh, and each scenario writes one row, passing
or not, with what it observed: the orders it placed and how they ended, orders stuck (not final
when it gave up waiting), orders duplicated (two final statuses, a once-per-order step twice, or
more than one process instance), the stock invariants it checked and how many were broken, and
the recovery figures it measured. "-" marks a figure the scenario did not get to check (it
failed before).
"""

from __future__ import annotations

import sys
from pathlib import Path

HEADER = ("| Fault | Orders in flight | Completed (delivered + cancelled) | Stuck | Duplicated | "
          "Invariant violations | Time to recover |\n|---|---|---|---|---|---|---|")


def table(path: Path) -> str:
    """The markdown table of the run whose rows are in path (a header line, then one row per scenario)."""
    lines = path.read_text().splitlines()
    columns = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        row = dict(zip(columns, line.split("\t"), strict=True))
        done = int(row["delivered"]) + int(row["cancelled"])
        checked = row["invariants_checked"]
        broken = row["invariant_violations"] if checked == "-" else f"{row['invariant_violations']} of {checked}"
        rows.append(f"| {row['fault']} | {row['orders']} | {done} ({row['delivered']} + {row['cancelled']}) | "
                    f"{row['stuck']} | {row['duplicated']} | {broken} | {_recovery(row['figures'])} |")
    return "\n".join([HEADER, *rows])


def _recovery(figures: str) -> str:
    values = dict(item.split("=") for item in figures.split())
    labels = {"crash_after_s": "crashed {}s in", "restart_ready_s": "worker ready {}s after restart",
              "server_ready_s": "server ready {}s after restart", "join_s": "2nd workers ready in {}s",
              "rejoin_ready_s": "killed worker ready {}s after restart",
              "drain_s": "all orders final {}s after recovery", "dead_letters": "{} dead letters",
              "replay_s": "replayed in {}s", "cancels_accepted": "{} cancellations accepted",
              "cancels_refused": "{} refused (shipped)", "answers_503": "{} answers 503 while it was down"}
    return "; ".join(labels[k].format(v) for k, v in values.items() if k in labels)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else ".run/faults/results.tsv")))
