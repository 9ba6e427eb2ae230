"""docker-compose.yml stays valid for users with Docker, checked here without Docker in seconds.

The file is interpolated as Compose does it (`${VAR:-default}`, `${VAR:?error}`, `$$`) and the
result is validated against the Compose Specification's JSON schema, vendored in
infra/compose/compose-spec.json (from compose-spec/compose-go v2.9.1, the loader of docker compose
v2.40). Where the docker compose plugin is installed, `make compose-check` asks it as well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "infra" / "compose" / "compose-spec.json").read_text())
# $$, $NAME, or ${NAME} with an optional modifier: :-default, -default, :?error, ?error, :+alt, +alt.
_VARIABLE = re.compile(r"\$(?:(\$)|([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\})")


class MissingVariable(Exception):
    """A required variable (`${NAME:?message}`) is unset or empty."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """The compose file with variables substituted as `docker compose config` does it."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(3)
        modifier, word = m.group(4), m.group(5) or ""
        current = env.get(name)
        unset = current is None or (current == "" and modifier is not None and modifier.startswith(":"))
        if modifier in (":-", "-"):
            return word if unset else current or ""
        if modifier in (":?", "?"):
            if unset:
                raise MissingVariable(f"required variable {name} is missing a value: {word}")
            return current or ""
        if modifier in (":+", "+"):
            return "" if unset else word
        return current or ""

    return _VARIABLE.sub(substitute, value)


def compose_config(env: Mapping[str, str]) -> dict[str, Any]:
    """docker-compose.yml interpolated with env and validated against the Compose schema."""
    config = interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), env)
    jsonschema.Draft7Validator(SCHEMA).validate(config)
    return config


def test_docker_compose_config_is_valid() -> None:
    config = compose_config({"EDPO_CAMUNDA_ADMIN_PASSWORD": "a-password"})
    assert config["services"]["camunda"]["environment"]["CAMUNDA_BPM_ADMINUSER_PASSWORD"] == "a-password"


def test_the_schema_rejects_what_compose_rejects() -> None:
    """The check is not a formality: a misspelt key and a wrong type fail it."""
    validator = jsonschema.Draft7Validator(SCHEMA)
    good = interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), {"EDPO_CAMUNDA_ADMIN_PASSWORD": "x"})
    assert not list(validator.iter_errors(good))
    misspelt = {**good, "services": {**good["services"], "order": {**good["services"]["order"], "comand": ["x"]}}}
    assert any("comand" in e.message for e in validator.iter_errors(misspelt))
    wrong_type = {**good, "services": {**good["services"], "order": {**good["services"]["order"], "ports": 6066}}}
    assert list(validator.iter_errors(wrong_type))


def test_compose_wants_the_admin_password_from_the_environment() -> None:
    with pytest.raises(MissingVariable, match="EDPO_CAMUNDA_ADMIN_PASSWORD"):
        compose_config({})
    with pytest.raises(MissingVariable, match="EDPO_CAMUNDA_ADMIN_PASSWORD"):
        compose_config({"EDPO_CAMUNDA_ADMIN_PASSWORD": ""})


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $SET $$SET ${UNSET}", env) == "v d d  v $SET "
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", env) == "alt||alt"
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?needed}", env)
    assert interpolate("${EMPTY?needed}", env) == ""


def test_compose_engine_requires_basic_auth_and_the_workers_sign_in() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    engine = services["camunda"]["environment"]
    assert engine["CAMUNDA_BPM_RUN_AUTH_ENABLED"] == "true"
    assert engine["CAMUNDA_BPM_ADMINUSER_PASSWORD"].startswith("${EDPO_CAMUNDA_ADMIN_PASSWORD:?")
    for name in ("order", "warehouse", "factory", "delivery"):
        worker = services[name]["environment"]
        assert worker["EDPO_CAMUNDA_USER"] == engine["CAMUNDA_BPM_ADMINUSER_ID"]
        assert worker["EDPO_CAMUNDA_PASSWORD"] == engine["CAMUNDA_BPM_ADMINUSER_PASSWORD"]


def test_compose_runs_the_three_servers_and_one_worker_per_service() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"kafka", "camunda", "postgres"} <= services.keys()
    for name in ("order", "warehouse", "factory", "delivery"):
        assert services[name]["command"][:3] == ["edpo", "worker", name]
