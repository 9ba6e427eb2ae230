"""The engine's REST API asks every caller who it is (HTTP basic auth); the settings' users are the ones it knows.

A wrong password locks an engine user for a few seconds (Camunda's login throttling), so the
wrong-password check uses a user of its own, never the service account the workers run on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from edpo.camunda.engine import Engine, EngineError, basic_authorization
from edpo.config import Settings


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: keep cookies from an IP address (the webapp's XSRF token and session on 127.0.0.1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _status(http: aiohttp.ClientSession, url: str, auth: tuple[str, str] | None = None) -> int:
    async with http.get(url, headers={"Authorization": basic_authorization(*auth)} if auth else None) as r:
        return r.status


async def test_the_engine_rest_api_answers_401_without_credentials(servers: Settings, http: aiohttp.ClientSession) -> None:
    for path in ("/version", "/process-definition", "/external-task", "/user"):
        assert await _status(http, f"{servers.camunda_url}{path}") == 401, path
    async with http.get(f"{servers.camunda_url}/version") as r:
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    # The list of engines is the one open request (how clients find an engine before they sign in).
    assert await _status(http, f"{servers.camunda_url}/engine") == 200


async def test_the_service_account_of_the_settings_is_let_in(servers: Settings, http: aiohttp.ClientSession) -> None:
    auth = (servers.camunda_user, servers.camunda_password)
    assert await _status(http, f"{servers.camunda_url}/version", auth) == 200
    async with Engine.from_settings(servers) as engine:
        assert await engine.request("GET", f"/user/{servers.camunda_user}/profile") == {
            "id": servers.camunda_user, "firstName": "EDPO", "lastName": "services", "email": None}


async def test_a_client_the_engine_refuses_says_who_it_tried_to_be(servers: Settings) -> None:
    stranger = f"nobody{uuid.uuid4().hex[:8]}"
    async with Engine(servers.camunda_url, auth=(stranger, "x")) as engine:
        with pytest.raises(EngineError, match=f"refuses the user '{stranger}'") as refused:
            await engine.request("GET", "/version")
    assert refused.value.status == 401
    async with Engine(servers.camunda_url) as anonymous:
        with pytest.raises(EngineError, match="sends none"):
            await anonymous.request("GET", "/version")


async def test_a_wrong_password_is_refused(servers: Settings, http: aiohttp.ClientSession, engine: Engine) -> None:
    user, password = f"authtest{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await engine.request("POST", "/user/create", json={"profile": {"id": user}, "credentials": {"password": password}})
    try:
        assert await _status(http, f"{servers.camunda_url}/version", (user, password)) == 200
        assert await _status(http, f"{servers.camunda_url}/version", (user, password + "x")) == 401
        assert await _status(http, f"{servers.camunda_url}/version",
                             (f"nobody{user}", password)) == 401
    finally:
        await engine.request("DELETE", f"/user/{user}")


async def test_the_admin_of_the_settings_logs_in_to_the_webapps_and_the_rest_api(
        servers: Settings, http: aiohttp.ClientSession) -> None:
    admin = (servers.camunda_admin_user, servers.camunda_admin_password)
    assert await _status(http, f"{servers.camunda_url}/version", admin) == 200

    webapps = f"http://{servers.host}:{servers.camunda_port}/camunda"
    async with http.get(f"{webapps}/app/welcome/default/") as r:  # hands out the XSRF token as a cookie
        assert r.status == 200
    token = next(c.value for c in http.cookie_jar if c.key == "XSRF-TOKEN")
    async with http.post(f"{webapps}/api/admin/auth/user/default/login/welcome", headers={"X-XSRF-TOKEN": token},
                         data={"username": servers.camunda_admin_user,
                               "password": servers.camunda_admin_password}) as r:
        assert r.status == 200, await r.text()
        login = await r.json()
    assert login["userId"] == servers.camunda_admin_user
    assert {"cockpit", "tasklist", "admin"} <= set(login["authorizedApps"])


def test_the_health_check_signs_in_and_says_when_the_engine_refuses_the_password(servers: Settings) -> None:
    from edpo.dev.process import StackError
    from edpo.dev.servers import Camunda

    assert Camunda(servers).healthy()
    # An unknown user, not a wrong password of a real one: that would lock the real one for a moment.
    stranger = servers.model_copy(update={"camunda_user": f"nobody{uuid.uuid4().hex[:8]}"})
    with pytest.raises(StackError, match="refuses the user"):
        Camunda(stranger).healthy()
    assert Camunda(stranger).status() == "refuses password"


async def test_a_changed_password_takes_effect_within_seconds(servers: Settings, http: aiohttp.ClientSession,
                                                              engine: Engine) -> None:
    # The engine remembers a verified Authorization header for 10 s (RememberedBasicAuthentication).
    user, old, new = f"authtest{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, uuid.uuid4().hex
    await engine.request("POST", "/user/create", json={"profile": {"id": user}, "credentials": {"password": old}})
    try:
        assert await _status(http, f"{servers.camunda_url}/version", (user, old)) == 200
        await engine.request("PUT", f"/user/{user}/credentials",
                             json={"password": new, "authenticatedUserPassword": servers.camunda_password})
        assert await _status(http, f"{servers.camunda_url}/version", (user, new)) == 200
        deadline = asyncio.get_running_loop().time() + 20
        while await _status(http, f"{servers.camunda_url}/version", (user, old)) == 200:
            assert asyncio.get_running_loop().time() < deadline, "the old password still works after 20 s"
            await asyncio.sleep(1)
    finally:
        await engine.request("DELETE", f"/user/{user}")
