"""A worker started by `edpo up` logs to its rotating file; what bypasses logging (a crash) lands in its .out file."""

from __future__ import annotations

import pytest

from edpo.config import Settings
from edpo.dev.process import StackError
from edpo.dev.workers import spawn_worker, wait_ready, worker_process


def test_a_worker_that_dies_at_start_leaves_its_traceback_in_its_out_file_and_edpo_names_both(tmp_path) -> None:  # noqa: ANN001
    settings = Settings(run_dir=tmp_path)
    # A setting the worker refuses: it exits before its logging is set up.
    env = {"EDPO_RUN_DIR": str(tmp_path), "EDPO_LOG_FORMAT": "xml"}
    proc = worker_process(settings, "factory", 7)

    assert spawn_worker(settings, "factory", 7, env) == "started"
    with pytest.raises(StackError) as failed:
        wait_ready(settings, [("factory", 7)], timeout=60)

    assert str(proc.log_file) in str(failed.value) and str(proc.output_file) in str(failed.value)
    out = proc.output_file.read_text()
    assert "Traceback" in out and "log_format" in out, out
