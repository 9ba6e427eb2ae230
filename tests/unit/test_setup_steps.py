"""infra/step.sh: an install step prints one line; its output is kept in .run/logs and shown on failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEP = ROOT / "infra" / "step.sh"


def _step(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(STEP), "demo-step", "a demo step", *command], cwd=tmp_path,
                          capture_output=True, text=True)


def test_a_step_that_succeeds_prints_one_line_and_keeps_its_output(tmp_path: Path) -> None:
    result = _step(tmp_path, "bash", "-c", "for i in $(seq 200); do echo noisy line $i; done; echo warning >&2")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("a demo step") and " done " in lines[0]
    assert lines[0].rstrip().endswith("s")
    assert result.stderr == ""
    kept = (tmp_path / ".run" / "logs" / "demo-step.log").read_text()
    assert "noisy line 200" in kept and "warning" in kept


def test_a_step_that_fails_shows_the_end_of_its_output_and_its_exit_code(tmp_path: Path) -> None:
    result = _step(tmp_path, "bash", "-c", "for i in $(seq 100); do echo line $i; done; echo the reason >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == ""
    assert "a demo step" in result.stderr and "FAILED" in result.stderr and "exit 3" in result.stderr
    assert "the reason" in result.stderr and "line 99" in result.stderr
    assert "line 10\n" not in result.stderr  # the end only, not all of it
