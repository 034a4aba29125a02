"""Rate limits on the real service: separate budgets, per key or per address, 429 with Retry-After and the
IETF RateLimit fields, X-Forwarded-For only from trusted proxies, and the per-worker split."""

from __future__ import annotations

import secrets
from dataclasses import replace

import aiohttp
import pytest

from faceserve.app import create_app
from faceserve.core import api_keys, token_buckets
from faceserve.http.appkeys import SERVICES
from faceserve.http.ratelimit import Limiter


@pytest.fixture
async def limited(settings, engine, aiohttp_client):
    configured = replace(settings, rate_limit_search="3/60", rate_limit_upload="5/60", rate_limit_read="4/60")
    return await aiohttp_client(create_app(configured, engine))


async def _post_search(client, headers=None):
    # no probe: a 400 from the handler, after the limiter has counted it (no model work needed)
    return await client.post("/api/face/search", data=aiohttp.FormData({"session_id": "1"}), headers=headers)


async def test_search_budget_answers_429_with_fields(limited):
    for remaining in (2, 1, 0):
        response = await _post_search(limited)
        assert response.status == 400
        assert response.headers["RateLimit-Policy"] == '"search";q=3;w=60'
        assert response.headers["RateLimit"].startswith(f'"search";r={remaining};t=')
    response = await _post_search(limited)
    assert response.status == 429
    body = await response.json()
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 20  # one token of 3 per 60 s
    assert response.headers["RateLimit"].startswith('"search";r=0;t=')
    assert response.headers["RateLimit-Policy"] == '"search";q=3;w=60'
    # other budgets are untouched
    response = await limited.get("/api/face/sessions")
    assert response.status == 200 and response.headers["RateLimit"].startswith('"read";r=3;')
    response = await limited.post("/api/face/sessions", json={"name": "x"})
    assert response.status == 201 and response.headers["RateLimit-Policy"] == '"upload";q=5;w=60'
    # health checks are never limited and carry no fields
    for _ in range(10):
        response = await limited.get("/healthz")
        assert response.status == 200 and "RateLimit" not in response.headers


async def test_every_route_spends_its_declared_budget(limited):
    """The session-path search once spent the upload budget: it was missing from one of three tables."""
    pool = limited.server.app[SERVICES].pool
    session_id = (await (await limited.post("/api/face/sessions", json={"name": "x"})).json())["data"]["id"]
    for path in ("/api/face/search", f"/api/face/sessions/{session_id}/search", f"/api/face/sessions/{session_id}/forget"):
        key, _ = await api_keys.create(pool, ["search", "write"])  # a bucket of its own for each route
        response = await limited.post(
            path, data=aiohttp.FormData({"session_id": str(session_id)}), headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status == 400, path
        assert response.headers["RateLimit-Policy"] == '"search";q=3;w=60', path


async def test_an_address_presenting_unknown_keys_is_slowed_before_a_query(settings, engine, aiohttp_client):
    configured = replace(settings, rate_limit_failed_auth="3/60", api_key_cache_s=120.0)
    client = await aiohttp_client(create_app(configured, engine))
    pool = client.server.app[SERVICES].pool
    valid, _ = await api_keys.create(pool, ["search"])
    assert (await client.get("/api/face/sessions")).status == 200  # the admin key: known from now on
    async with aiohttp.ClientSession() as anon:

        async def status(key: str) -> tuple[int, str | None]:
            headers = {"Authorization": f"Bearer {key}"}
            async with anon.get(client.make_url("/api/face/sessions"), headers=headers) as response:
                return response.status, response.headers.get("Retry-After")

        assert (await status(valid))[0] == 200  # known to this process from now on
        made_up = ["fsk_" + secrets.token_urlsafe(32) for _ in range(5)]
        answers = [await status(key) for key in made_up]
        assert [a[0] for a in answers] == [401, 401, 401, 429, 429]
        assert 1 <= int(answers[3][1]) <= 20
        # a key this process holds as valid still passes; so does everyone else's address
        assert (await status(valid))[0] == 200
    assert (await client.get("/api/face/sessions")).status == 200


async def test_each_key_and_each_address_has_its_own_bucket(limited):
    pool = limited.server.app[SERVICES].pool
    for _ in range(3):
        await _post_search(limited)
    assert (await _post_search(limited)).status == 429
    other, _ = await api_keys.create(pool, ["search"])
    response = await _post_search(limited, {"Authorization": f"Bearer {other}"})
    assert response.status == 400 and response.headers["RateLimit"].startswith('"search";r=2;')

    # without a key (a signed or public image): by client address; X-Forwarded-For is not believed
    async with aiohttp.ClientSession() as anon:
        statuses = []
        for i in range(6):
            async with anon.get(limited.make_url("/api/face/image/999"), headers={"X-Forwarded-For": f"10.0.0.{i}"}) as r:
                statuses.append(r.status)
        assert statuses == [404] * 4 + [429] * 2


async def test_forwarded_for_only_from_trusted_proxies(settings, engine, aiohttp_client):
    configured = replace(settings, rate_limit_read="2/60", trusted_proxies="127.0.0.1, 10.9.0.0/16")
    client = await aiohttp_client(create_app(configured, engine))
    async with aiohttp.ClientSession() as anon:

        async def fetch(forwarded: str) -> int:
            async with anon.get(client.make_url("/api/face/image/999"), headers={"X-Forwarded-For": forwarded}) as r:
                return r.status

        assert [await fetch("203.0.113.1") for _ in range(3)] == [404, 404, 429]
        assert [await fetch("203.0.113.2") for _ in range(2)] == [404, 404]  # another client, another bucket
        # a client cannot pick its bucket by prepending: the rightmost untrusted hop counts
        assert await fetch("198.51.100.7, 203.0.113.1") == 429
        assert await fetch("203.0.113.1, 10.9.3.4") == 429  # through a second trusted proxy


def test_buckets_refill_and_split_across_workers(settings):
    buckets = token_buckets.Buckets(token_buckets.Quota(6, 60))
    assert [buckets.take("a", now=0.0).allowed for _ in range(7)] == [True] * 6 + [False]
    refused = buckets.take("a", now=0.0)
    assert refused.retry_after_s == 10 and refused.reset_s == 60
    assert buckets.take("a", now=10.0).allowed and not buckets.take("a", now=10.0).allowed
    limiter = Limiter.from_settings(replace(settings, workers=2, rate_limit_search="6/60"))
    search = limiter.budgets["search"]
    assert search.capacity == 3 and search.rate == pytest.approx(3 / 60)
    with pytest.raises(ValueError):
        token_buckets.Quota.parse("10 per minute")


def test_a_flood_of_identities_does_not_grow_memory():
    buckets = token_buckets.Buckets(token_buckets.Quota(5, 60), max_entries=100)
    for i in range(1000):
        buckets.take(f"ip:{i}", now=float(i))
    assert len(buckets._state) <= 100
