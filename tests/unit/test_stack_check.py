"""The suite's check that running workers were started with the suite's own settings."""

from __future__ import annotations

import pytest

from tests.stack_check import (
    describe_differences,
    settings_differences,
    settings_from_env,
)


def test_the_same_environment_means_no_difference() -> None:
    env = {"EDPO_COURIER_TIME": "0.5", "EDPO_FACTORY_LEAD_TIME": "1", "PATH": "/usr/bin"}
    assert settings_differences(settings_from_env(env), settings_from_env(dict(env))) == {}


def test_spellings_of_the_same_value_and_defaults_do_not_count_as_differences() -> None:
    suite = settings_from_env({"EDPO_TICK": "0.2", "EDPO_PARTITIONS": "4", "EDPO_COURIER_TIME": ""})
    running = settings_from_env({"edpo_courier_time": "3.0"})
    assert settings_differences(suite, running) == {}


def test_a_differing_setting_is_named_with_both_values() -> None:
    suite = settings_from_env({"EDPO_COURIER_TIME": "0.5", "EDPO_FACTORY_LEAD_TIME": "1"})
    running = settings_from_env({})  # `make up`: every default
    assert settings_differences(suite, running) == {"courier_time": (0.5, 3.0), "factory_lead_time": (1.0, 5.0)}


def test_derived_settings_follow_what_they_derive_from() -> None:
    suite = settings_from_env({})
    running = settings_from_env({"EDPO_PG_PORT": "55499"})
    diff = settings_differences(suite, running)
    assert diff["pg_port"] == (55432, 55499)
    assert diff["database_url"] == ("postgresql://edpo@127.0.0.1:55432/edpo", "postgresql://edpo@127.0.0.1:55499/edpo")


def test_the_instance_number_and_log_level_are_not_compared() -> None:
    suite = settings_from_env({})
    running = settings_from_env({"EDPO_INSTANCE": "2", "EDPO_LOG_LEVEL": "debug"})
    assert settings_differences(suite, running) == {}


def test_settings_come_from_the_given_environment_not_from_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDPO_COURIER_TIME", "42")
    assert settings_from_env({}).courier_time == 3.0
    assert settings_from_env({"EDPO_COURIER_TIME": "7"}).courier_time == 7.0


def test_the_message_names_each_variable_its_values_and_the_workers() -> None:
    suite = settings_from_env({"EDPO_COURIER_TIME": "0.5"})
    running = settings_from_env({})
    diff = settings_differences(suite, running)
    text = describe_differences({"delivery-1": diff, "order-1": diff})
    assert text.splitlines() == [
        "  EDPO_COURIER_TIME: the suite uses 0.5, the running workers (delivery-1, order-1) use 3.0",
    ]



def test_a_differing_password_is_named_but_not_shown() -> None:
    text = describe_differences({"order-1": {"camunda_db_password": ("s3cret-one", "s3cret-two")}})
    assert "EDPO_CAMUNDA_DB_PASSWORD" in text and "s3cret" not in text
