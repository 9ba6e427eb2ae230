"""Does an already running stack run with the suite's settings?

The suite reuses workers that are already running (`edpo up`, `make up`, an earlier `make
test`). Workers started with other settings (`make up`'s courier time of 3 s where the suite
wants 0.5 s, another partition count, another database) would make the suite test something
else, or time out for no visible reason. Nothing a worker serves reports its settings, but
its environment at start does: a worker builds its settings once from its `EDPO_*` variables
(`edpo worker` adds only `--instance`), and Linux keeps them in /proc/PID/environ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edpo.config import Settings

# Which worker a process is (set by `edpo worker --instance`, different for every worker), and
# how much it logs, change nothing the suite observes.
IGNORED = frozenset({"instance", "log_level"})
PREFIX = "EDPO_"


class _EnvOnly(Settings):
    """Settings built from given values alone: not from this process's environment."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        return (init_settings,)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The settings a process with environment env builds (as `Settings()` does in that process)."""
    # Settings() matches variable names case-insensitively and treats an empty variable as unset.
    values = {name[len(PREFIX):].lower(): value for name, value in env.items()
              if name.upper().startswith(PREFIX) and value != ""}
    return _EnvOnly(**values)


def settings_differences(suite: Settings, running: Settings) -> dict[str, tuple[Any, Any]]:
    """Setting name -> (the suite's value, the running worker's value), for every setting that differs."""
    return {name: (getattr(suite, name), getattr(running, name)) for name in Settings.model_fields
            if name not in IGNORED and getattr(suite, name) != getattr(running, name)}


def describe_differences(differences: Mapping[str, Mapping[str, tuple[Any, Any]]]) -> str:
    """One line per differing setting, naming the variable, both values and the workers concerned.

    differences: worker name -> settings_differences(suite, that worker's settings)."""
    by_setting: dict[tuple[str, str, str], list[str]] = {}
    for worker, diff in sorted(differences.items()):
        for name, (ours, theirs) in diff.items():
            by_setting.setdefault((name, _shown(name, ours), _shown(name, theirs)), []).append(worker)
    return "\n".join(f"  {PREFIX}{name.upper()}: the suite uses {ours}, the running workers "
                     f"({', '.join(workers)}) use {theirs}"
                     for (name, ours, theirs), workers in sorted(by_setting.items()))


def _shown(name: str, value: Any) -> str:
    if ("password" in name or "token" in name or name in ("database_url", "camunda_db_url")) and value:
        return "'***'"  # that it differs is enough; the value stays out of test reports
    return str(value) if isinstance(value, Path) else repr(value)


def process_env(pid: int) -> dict[str, str]:
    """The environment a process was started with (raises OSError when it cannot be read)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def running_stack_problems(settings: Settings) -> str | None:
    """Why the running workers (pid files under the suite's run dir) must not be reused, or None."""
    from edpo.dev.workers import running_workers

    differences: dict[str, dict[str, tuple[Any, Any]]] = {}
    unreadable: list[str] = []
    for proc in running_workers(settings):
        pid = proc.pid()
        if pid is None:
            continue  # a stale pid file: that worker will be started with the suite's settings
        try:
            env = process_env(pid)
        except OSError as e:
            unreadable.append(f"  {proc.name} (pid {pid}): {e}")
            continue
        try:
            running = settings_from_env(env)
        except ValidationError as e:
            unreadable.append(f"  {proc.name} (pid {pid}): its EDPO_* variables are invalid: {e}")
            continue
        diff = settings_differences(settings, running)
        if diff:
            differences[proc.name] = diff
    if not differences and not unreadable:
        return None
    lines = [("The stack already running was started with other settings than this test run's; "
              "its workers would be reused and the suite would test something else.")]
    if differences:
        lines += ["Settings that differ:", describe_differences(differences)]
    if unreadable:
        lines += ["Workers whose settings cannot be told:", *unreadable]
    lines.append("Stop the stack (`make down` or `edpo down`) or run the suite with the same EDPO_* "
                 "variables the stack was started with.")
    return "\n".join(lines)
