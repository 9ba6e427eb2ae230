"""Passwords nobody set are generated once per RUN_DIR into RUN_DIR/secrets.env; a variable wins."""

from __future__ import annotations

import multiprocessing
import stat
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from edpo.config import SECRETS_FILE, Settings, read_secrets, run_dir_secrets

PASSWORDS = ("EDPO_CAMUNDA_PASSWORD", "EDPO_CAMUNDA_ADMIN_PASSWORD")


@pytest.fixture(autouse=True)
def no_password_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PASSWORDS:
        monkeypatch.delenv(name, raising=False)


def test_passwords_are_generated_once_into_a_file_only_the_owner_reads(tmp_path: Path) -> None:
    first = Settings(run_dir=tmp_path)
    file = tmp_path / SECRETS_FILE
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert read_secrets(file) == {"EDPO_CAMUNDA_PASSWORD": first.camunda_password,
                                  "EDPO_CAMUNDA_ADMIN_PASSWORD": first.camunda_admin_password}
    assert len(first.camunda_password) >= 24 and first.camunda_password != first.camunda_admin_password
    assert first.generated("camunda_password") and first.secret_origin("camunda_password") == str(file)

    again = Settings(run_dir=tmp_path)
    assert (again.camunda_password, again.camunda_admin_password) == (first.camunda_password,
                                                                      first.camunda_admin_password)
    assert first.for_instance(2).camunda_password == first.camunda_password
    assert Settings(run_dir=tmp_path / "other").camunda_password != first.camunda_password


def test_a_variable_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generated = Settings(run_dir=tmp_path)
    monkeypatch.setenv("EDPO_CAMUNDA_PASSWORD", "from-the-environment")
    settings = Settings(run_dir=tmp_path)
    assert settings.camunda_password == "from-the-environment"
    assert not settings.generated("camunda_password")
    assert settings.secret_origin("camunda_password") == "$EDPO_CAMUNDA_PASSWORD"
    assert settings.camunda_admin_password == generated.camunda_admin_password
    assert read_secrets(tmp_path / SECRETS_FILE)["EDPO_CAMUNDA_PASSWORD"] == generated.camunda_password


def test_no_file_is_written_when_every_password_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PASSWORDS:
        monkeypatch.setenv(name, f"set-{name}")
    settings = Settings(run_dir=tmp_path / "run")
    assert settings.camunda_admin_password == "set-EDPO_CAMUNDA_ADMIN_PASSWORD"
    assert not (tmp_path / "run").exists()


def test_passwords_stay_out_of_the_settings_repr(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path, api_token="a-token")
    text = repr(settings) + str(settings)
    assert settings.camunda_password not in text and settings.camunda_admin_password not in text
    assert "a-token" not in text


def test_the_dispatcher_is_the_admin_unless_set(tmp_path: Path) -> None:
    assert Settings(run_dir=tmp_path).dispatcher_user == "demo"
    assert Settings(run_dir=tmp_path, camunda_admin_user="ops").dispatcher_user == "ops"
    assert Settings(run_dir=tmp_path, camunda_admin_user="ops", dispatcher_user="ada").dispatcher_user == "ada"


def test_a_file_lacking_a_password_gets_it_added_and_keeps_the_rest(tmp_path: Path) -> None:
    file = tmp_path / SECRETS_FILE
    file.write_text("# by hand\nEDPO_CAMUNDA_PASSWORD=mine\n")
    settings = Settings(run_dir=tmp_path)
    assert settings.camunda_password == "mine"
    assert read_secrets(file) == {"EDPO_CAMUNDA_PASSWORD": "mine",
                                  "EDPO_CAMUNDA_ADMIN_PASSWORD": settings.camunda_admin_password}
    assert Settings(run_dir=tmp_path).camunda_admin_password == settings.camunda_admin_password


def test_threads_creating_the_file_at_once_all_get_the_same_passwords(tmp_path: Path) -> None:
    start = threading.Barrier(16)

    def create() -> dict[str, str]:
        start.wait()
        return run_dir_secrets(tmp_path)

    with ThreadPoolExecutor(16) as pool:
        seen = [f.result() for f in [pool.submit(create) for _ in range(16)]]
    assert all(s == seen[0] for s in seen)
    assert read_secrets(tmp_path / SECRETS_FILE) == seen[0]
    assert [p.name for p in tmp_path.iterdir()] == [SECRETS_FILE], "no temporary file is left behind"


def _password_of_a_new_process(run_dir: Path) -> str:
    return Settings(run_dir=run_dir).camunda_password


def test_processes_building_settings_at_once_all_get_the_same_password(tmp_path: Path) -> None:
    with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("spawn")) as pool:
        seen = set(pool.map(_password_of_a_new_process, [tmp_path] * 32))
    assert seen == {read_secrets(tmp_path / SECRETS_FILE)["EDPO_CAMUNDA_PASSWORD"]}
