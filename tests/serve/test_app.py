"""The HTTP service (serve.app) over a fake engine: valid, invalid and hostile payloads, errors by
kind, catalogue updates through the API, micro-batching, metrics, probes, logs, shutdown; then
one end-to-end request against a real run, and `gpr serve` itself under SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gpr.core.errors import GprInputError
from gpr.serve.app import JsonFormatter, Settings, create_app
from gpr.serve.batcher import Closed, MicroBatcher, Overloaded
from gpr.serve.catalogue import LiveCatalogue
from gpr.serve.engine import LIMITS, Recommendation, ServedAd, ServeRequest
from gpr.serve.segments import SegmentSpace
from tests.conftest import ROOT, run_cli

SIZES = [4, 4, 3]  # 48 leaves
N_ADS = 30
BAD_ITEM = 777_777  # a journey item the fake engine refuses (GprInputError)
BOOM_ITEM = 666_666  # a journey item on which the fake engine crashes (a bug: 500)


class FakeEngine:
    """The Engine interface over a LiveCatalogue of random ads that target everyone: each request
    gets its first k eligible ads in column order (the last one with a log p of -inf)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        leaves = np.stack(np.meshgrid(*[np.arange(s) for s in SIZES], indexing="ij"), -1)
        paths = rng.permutation(leaves.reshape(-1, len(SIZES)))[:N_ADS]
        self.catalogue = LiveCatalogue(SIZES, SegmentSpace(5, 2, 6), day=3)
        self.catalogue.add_ads(
            1000 + np.arange(N_ADS),
            paths,
            target_ages=31,
            target_regions=63,
            target_gender=-1,
            created_day=0,
            end_day=100,
            bid=rng.uniform(0.1, 2.0, N_ADS),
            budget=100.0,
        )
        self.limits = dict(LIMITS)
        self.info = {"run": "fake", "model": "fake", "catalogue_ads": N_ADS}
        self.batches: list[int] = []
        self.delay = 0.0
        self.started = threading.Event()  # set when a batch enters recommend
        self.release = threading.Event()  # recommend waits for it when `block`
        self.block = False

    def recommend(self, reqs: list[ServeRequest]) -> list[Recommendation]:
        self.batches.append(len(reqs))
        self.started.set()
        if self.block:
            self.release.wait(10)
        time.sleep(self.delay)
        for r in reqs:
            items = {e.item_id for e in r.journey}
            if BAD_ITEM in items:
                raise GprInputError(f"unknown item {BAD_ITEM}", field="requests[3].journey.item_id")
            if BOOM_ITEM in items:
                raise RuntimeError("boom")
        cat = self.catalogue
        seg = cat.space.of(
            [r.user.age_band for r in reqs],
            [r.user.gender for r in reqs],
            [r.user.region for r in reqs],
        )
        mask = cat.mask_segments(seg).numpy()
        ids = cat.items.numpy()
        out = []
        for r, req in enumerate(reqs):
            chosen = ids[mask[r]][: req.k].tolist()
            ads = [
                ServedAd(
                    item_id=int(i),
                    score=float(-j),
                    logp=-math.inf if j == len(chosen) - 1 else -0.5 * j,
                    pctr=0.1,
                    pcvr=0.2,
                    ecpm=1000 * 0.02 * cat.get(i)["bid"],
                    bid=cat.get(i)["bid"],
                )
                for j, i in enumerate(chosen)
            ]
            out.append(Recommendation(ads, {"decode": 0.5}))
        return out


def request(**over: Any) -> dict[str, Any]:
    """A valid /v1/recommend body."""
    body: dict[str, Any] = {
        "user": {"age_band": 1, "gender": 0, "region": 2, "activity_tier": 1},
        "journey": [
            {"token_type": "O", "timestamp": 100, "item_id": 5},
            {"token_type": "E", "timestamp": 110, "scene": 0, "slot": 1, "device": 2, "hour": 9},
            {"token_type": "I", "timestamp": 110, "item_id": 1003, "action": 1},
        ],
        "env": {"scene": 1, "slot": 2, "device": 0, "hour": 10},
        "timestamp": 200,
        "k": 5,
    }
    body.update(over)
    return body


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, Settings(max_wait_ms=1.0))) as c:
        yield c


def served(client: TestClient, k: int = 100) -> list[int]:
    r = client.post("/v1/recommend", json=request(k=k))
    assert r.status_code == 200, r.text
    return [a["item_id"] for a in r.json()["ads"]]


def metric(client: TestClient, name: str) -> float:
    """The value of one sample line of /metrics (0 when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# --- recommendations ----------------------------------------------------------------------------
def test_recommend_returns_ranked_ads_and_timings(client: TestClient) -> None:
    r = client.post("/v1/recommend", json=request())
    assert r.status_code == 200, r.text
    out = r.json()
    assert [a["item_id"] for a in out["ads"]] == [1000, 1001, 1002, 1003, 1004]
    assert out["ads"][0]["pctr"] == 0.1 and out["ads"][0]["bid"] > 0
    assert out["ads"][-1]["logp"] is None  # -inf is not JSON: null
    assert {"decode", "queue", "batch", "total"} <= set(out["timings_ms"])
    assert out["batch_size"] == 1 and out["catalogue_version"] >= 1
    assert client.post("/v1/recommend", json=request(journey=[])).status_code == 200
    # an event with every field set (the ad world logs the request's environment on I events)
    ev = {"token_type": "I", "timestamp": 1, "item_id": 9, "action": 2, "scene": 0, "slot": 1}
    assert client.post("/v1/recommend", json=request(journey=[ev])).status_code == 200


def _long_journey(n: int) -> list[dict[str, Any]]:
    return [{"token_type": "O", "timestamp": 1, "item_id": 1}] * n


def ev(token_type: str, timestamp: int = 1, **fields: int) -> dict[str, Any]:
    return {"token_type": token_type, "timestamp": timestamp, **fields}


USER, ENV = request()["user"], request()["env"]
INVALID: list[tuple[str, dict[str, Any], str | None]] = [
    ("missing user", {"user": None}, "user"),
    ("age band over the engine's limit", {"user": {**USER, "age_band": 5}}, "age_band"),
    ("negative gender", {"user": {**USER, "gender": -1}}, "gender"),
    ("region as a string", {"user": {**USER, "region": "2"}}, "region"),
    ("tier as a float", {"user": {**USER, "activity_tier": 1.0}}, "activity_tier"),
    ("tier as a bool", {"user": {**USER, "activity_tier": True}}, "activity_tier"),
    ("unknown key", {"extra": 1}, "extra"),
    ("unknown user key", {"user": {**USER, "age": 3}}, "age"),
    ("k = 0", {"k": 0}, "k"),
    ("k = 101", {"k": 101}, "k"),
    ("hour 24", {"env": {**ENV, "hour": 24}}, "hour"),
    ("slot over the limit", {"env": {**ENV, "slot": 6}}, "slot"),
    ("journey too long", {"journey": _long_journey(1025)}, "journey"),
    ("unknown token type", {"journey": [ev("X")]}, "token_type"),
    ("O without item", {"journey": [ev("O")]}, "journey.0"),
    ("I without action", {"journey": [ev("I", item_id=3)]}, "journey.0"),
    ("E without env", {"journey": [ev("E", scene=0)]}, "journey.0"),
    ("action 3", {"journey": [ev("I", item_id=3, action=3)]}, "action"),
    ("negative timestamp", {"timestamp": -1}, "timestamp"),
    ("huge int", {"timestamp": 2**80}, "timestamp"),
    ("item id over 2^40", {"journey": [ev("O", item_id=2**41)]}, "item_id"),
    ("events out of order", {"journey": [ev("O", 5, item_id=1), ev("O", 4, item_id=1)]}, None),
    ("journey after the request", {"timestamp": 50}, None),
    ("journey not a list", {"journey": {"token_type": "O"}}, "journey"),
]


@pytest.mark.parametrize("what,over,field", INVALID, ids=[i[0] for i in INVALID])
def test_invalid_requests_are_422_naming_the_field(
    client: TestClient, what: str, over: dict[str, Any], field: str | None
) -> None:
    body = request(**over)
    if over.get("user", 0) is None:
        del body["user"]
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 422, (what, r.text)
    err = r.json()["error"]
    assert err["kind"] == "validation" and err["message"]
    if field is not None:
        assert field in (err["field"] or ""), err
    assert err["details"] and all("input" not in d for d in err["details"])  # never echoed


@pytest.mark.parametrize(
    "content,headers",
    [
        (b"", {"content-type": "application/json"}),
        (b"{not json", {"content-type": "application/json"}),
        (b"null", {"content-type": "application/json"}),
        (b"[1, 2]", {"content-type": "application/json"}),
        (b"\xff\xfe\x00garbage", {"content-type": "application/json"}),
        (json.dumps(request()).encode(), {"content-type": "text/plain"}),
        (b"[" * 100_000 + b"]" * 100_000, {"content-type": "application/json"}),  # deep nesting
        (b'{"user": NaN}', {"content-type": "application/json"}),
        (json.dumps(request()).replace('"k": 5', '"k": 5, "k": 500').encode(), {}),
    ],
    ids=["empty", "broken", "null", "list", "binary", "text/plain", "nested", "nan", "dup-key"],
)
def test_malformed_bodies_are_4xx(client: TestClient, content: bytes, headers: dict) -> None:
    r = client.post("/v1/recommend", content=content, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["kind"] in ("validation", "bad_request")


def test_oversized_bodies_are_413(engine: FakeEngine) -> None:
    app = create_app(engine, Settings(max_body_bytes=4096))
    with TestClient(app) as c:
        assert c.post("/v1/recommend", json=request()).status_code == 200
        big = request(journey=_long_journey(200))  # ~ 9 KB
        r = c.post("/v1/recommend", json=big)
        assert r.status_code == 413 and r.json()["error"]["kind"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
            yield json.dumps(big).encode()[:3000]
            yield json.dumps(big).encode()[3000:]

        r = c.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert "4096" in r.json()["error"]["message"]
        assert metric(c, 'gpr_errors_total{kind="too_large"}') == 2
    assert engine.batches == [1]


def test_engine_input_errors_are_422_and_bugs_are_500_counted(
    client: TestClient, engine: FakeEngine
) -> None:
    bad = request(journey=[{"token_type": "O", "timestamp": 1, "item_id": BAD_ITEM}])
    r = client.post("/v1/recommend", json=bad)
    assert r.status_code == 422
    assert r.json()["error"] == {
        "kind": "input",
        "field": "journey.item_id",
        "message": f"unknown item {BAD_ITEM}",
    }
    boom = request(journey=[{"token_type": "O", "timestamp": 1, "item_id": BOOM_ITEM}])
    r = client.post("/v1/recommend", json=boom)
    assert r.status_code == 500 and r.json()["error"]["kind"] == "internal"
    assert "boom" not in r.text  # no internals leak
    assert metric(client, 'gpr_errors_total{kind="internal"}') == 1
    assert metric(client, 'gpr_errors_total{kind="input"}') == 1
    assert client.get("/readyz").status_code == 200  # the worker survived


def test_a_bug_outside_the_engine_is_a_logged_500(
    client: TestClient, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(item_id: int) -> dict[str, Any]:
        raise KeyError("internal detail")

    monkeypatch.setattr(engine.catalogue, "get", broken)
    r = client.get("/v1/ads/1000")
    assert r.status_code == 500
    assert r.json()["error"]["kind"] == "internal" and "detail" not in r.text
    assert metric(client, 'gpr_errors_total{kind="internal"}') == 1
    assert (
        metric(client, 'gpr_requests_total{method="GET",path="/v1/ads/{item_id}",status="500"}')
        == 1
    )


def test_one_bad_request_does_not_fail_its_batch(engine: FakeEngine) -> None:
    engine.block = True
    app = create_app(engine, Settings(max_batch=8, max_wait_ms=200))
    bad = request(journey=[{"token_type": "O", "timestamp": 1, "item_id": BAD_ITEM}])
    with TestClient(app) as c, ThreadPoolExecutor(6) as pool:
        first = pool.submit(c.post, "/v1/recommend", json=request())
        assert engine.started.wait(5)  # the first batch is in the engine; the rest queue
        futs = [
            pool.submit(c.post, "/v1/recommend", json=bad if i == 2 else request())
            for i in range(5)
        ]
        time.sleep(0.3)
        engine.release.set()
        codes = [f.result().status_code for f in futs]
        assert first.result().status_code == 200
    assert codes == [200, 200, 422, 200, 200]
    assert engine.batches[:2] == [1, 5]  # the batch of 5 failed, then was retried one by one


# --- micro-batching -------------------------------------------------------------------------------
def test_concurrent_requests_are_batched(engine: FakeEngine) -> None:
    engine.delay = 0.05
    app = create_app(engine, Settings(max_batch=8, max_wait_ms=20))
    with TestClient(app) as c, ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(lambda _: c.post("/v1/recommend", json=request()), range(24)))
        assert all(r.status_code == 200 for r in rs)
        assert max(r.json()["batch_size"] for r in rs) > 1
        assert sum(engine.batches) == 24 and max(engine.batches) <= 8
        assert len(engine.batches) < 24
        assert metric(c, "gpr_batch_size_count") == len(engine.batches)
        assert metric(c, "gpr_batch_size_sum") == 24
        # every response is its own request's answer
        ks = list(pool.map(lambda k: c.post("/v1/recommend", json=request(k=k)), range(1, 13)))
        assert [len(r.json()["ads"]) for r in ks] == list(range(1, 13))


def test_a_full_queue_gets_429(engine: FakeEngine) -> None:
    engine.block = True
    app = create_app(engine, Settings(max_batch=1, max_queue=1))
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        first = pool.submit(c.post, "/v1/recommend", json=request())
        assert engine.started.wait(5)
        r = c.post("/v1/recommend", json=request())
        assert r.status_code == 429 and r.json()["error"]["kind"] == "overloaded"
        assert r.headers["retry-after"] == "1"
        engine.release.set()
        assert first.result().status_code == 200


def test_batcher_drains_on_close_and_refuses_after() -> None:
    calls: list[list[int]] = []

    def double(xs: list[int]) -> list[int]:
        time.sleep(0.02)
        calls.append(xs)
        return [2 * x for x in xs]

    async def main() -> None:
        b: MicroBatcher[int, int] = MicroBatcher(double, max_batch=4, max_wait_ms=5, max_queue=100)
        await b.start()
        tasks = [asyncio.create_task(b.submit(i)) for i in range(10)]
        await asyncio.sleep(0)  # all queued
        await b.close(timeout=5)
        assert [t.result().result for t in tasks] == [2 * i for i in range(10)]
        assert sorted(x for c in calls for x in c) == list(range(10))
        assert max(len(c) for c in calls) <= 4 and not b.running
        with pytest.raises(Closed):
            await b.submit(1)
        small: MicroBatcher[int, int] = MicroBatcher(double, max_queue=1)
        await small.start()
        t = asyncio.create_task(small.submit(1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await small.submit(2)
        assert (await t).result == 2
        await small.close()

    asyncio.run(main())


# --- the live catalogue through the API -----------------------------------------------------------
def free_path(engine: FakeEngine) -> list[int]:
    taken = {tuple(p) for p in engine.catalogue.paths.tolist()}
    return next(list(p) for p in np.ndindex(*SIZES) if p not in taken)


def test_catalogue_updates_through_the_api(client: TestClient, engine: FakeEngine) -> None:
    assert 1000 in served(client)
    r = client.post("/v1/ads", json={"op": "pause", "item_id": 1000})
    assert r.status_code == 200 and r.json()["ad"]["paused"] and not r.json()["ad"]["live"]
    for _ in range(3):  # a paused ad is never served afterwards
        assert 1000 not in served(client)
    assert client.get("/v1/ads/1000").json()["ad"]["paused"]
    client.post("/v1/ads", json={"op": "resume", "item_id": 1000})
    assert 1000 in served(client)

    new = {
        "op": "add",
        "item_id": 5000,
        "path": free_path(engine),
        "target_ages": 31,
        "target_regions": 63,
        "bid": 1.5,
        "budget": 10.0,
    }
    r = client.post("/v1/ads", json=new)
    assert r.status_code == 200, r.text
    ad = r.json()["ad"]
    assert ad["live"] and ad["created_day"] == engine.catalogue.day and ad["target_gender"] == -1
    assert 5000 in served(client)  # a new ad can be served
    assert client.get("/metrics").text.count("gpr_trie_ads 31.0") == 1

    r = client.post("/v1/ads", json=new)
    assert r.status_code == 409 and r.json()["error"]["kind"] == "conflict"
    r = client.post("/v1/ads", json={**new, "item_id": 5001})  # the path is taken
    assert r.status_code == 422 and r.json()["error"] == {
        "kind": "input",
        "field": "path",
        "message": f"path {new['path']} is already taken by another ad",
    }

    # budget exhausted: not served; a new budget brings it back
    client.post("/v1/ads", json={"op": "spend", "item_id": 5000, "amount": 10.0})
    assert client.get("/v1/ads/5000").json()["ad"]["exhausted"]
    assert 5000 not in served(client)
    r = client.post("/v1/ads", json={"op": "budget", "item_id": 5000, "budget": 20.0})
    assert r.json()["ad"]["live"] and 5000 in served(client)
    r = client.post("/v1/ads", json={"op": "budget", "item_id": 1001, "budget": 0})
    assert 1001 not in served(client)


@pytest.mark.parametrize(
    "body,status,kind",
    [
        ({"op": "pause", "item_id": 424242}, 404, "not_found"),
        ({"op": "budget", "item_id": 424242, "budget": 1.0}, 404, "not_found"),
        ({"op": "pause", "item_id": -1}, 422, "validation"),
        ({"op": "pause"}, 422, "validation"),
        ({"op": "delete", "item_id": 1000}, 422, "validation"),
        ({"op": "budget", "item_id": 1000, "budget": -1}, 422, "validation"),
        ({"op": "budget", "item_id": 1000, "budget": 1e300}, 422, "validation"),
        ({"op": "spend", "item_id": 1000, "amount": "NaN"}, 422, "validation"),
        ({"op": "pause", "item_id": 1000, "why": "x"}, 422, "validation"),
        ({"op": "add", "item_id": 7, "path": [0, 0, 0], "target_ages": 32,
          "target_regions": 1, "bid": 1.0, "budget": 1.0}, 422, "validation"),
        ({"op": "add", "item_id": 7, "target_ages": 1, "target_regions": 1, "bid": 1.0,
          "budget": 1.0}, 422, "validation"),
        ({"op": "add", "item_id": 7, "path": [0], "embedding": [0.1], "target_ages": 1,
          "target_regions": 1, "bid": 1.0, "budget": 1.0}, 422, "validation"),
        ({"op": "add", "item_id": 7, "path": [0, 0, 0], "target_ages": 1, "target_regions": 1,
          "bid": 0, "budget": 1.0}, 422, "validation"),
        ({"op": "add", "item_id": 7, "path": [0, 0], "target_ages": 1, "target_regions": 1,
          "bid": 1.0, "budget": 1.0}, 422, "input"),  # the trie has 3 levels
        ({"op": "add", "item_id": 7, "path": [0, 9, 0], "target_ages": 1, "target_regions": 1,
          "bid": 1.0, "budget": 1.0}, 422, "input"),  # code outside its level
        ({"op": "add", "item_id": 7, "embedding": [0.5] * 8, "target_ages": 1,
          "target_regions": 1, "bid": 1.0, "budget": 1.0}, 422, "input"),  # no tokenizer
        ({"op": "add", "item_id": 7, "path": [0, 0, 0], "target_ages": 1, "target_regions": 1,
          "bid": 1.0, "budget": 1.0, "created_day": 5, "end_day": 4}, 422, "validation"),
    ],
)  # fmt: skip
def test_bad_ad_updates(client: TestClient, body: dict, status: int, kind: str) -> None:
    r = client.post("/v1/ads", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["kind"] == kind


@pytest.mark.parametrize(
    "path,status",
    [("1000", 200), ("424242", 404), ("-3", 422), ("abc", 422), ("1e3", 422),
     (str(2**70), 422), ("%00", 422), ("1000/x", 404)],
)  # fmt: skip
def test_get_ad(client: TestClient, path: str, status: int) -> None:
    r = client.get(f"/v1/ads/{path}")
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json()["ad"]["item_id"] == 1000 and r.json()["ad"]["live"]
    else:
        assert r.json()["error"]["message"]


# --- probes, metrics, docs, logs ------------------------------------------------------------------
def test_probes_metrics_and_docs(engine: FakeEngine) -> None:
    app = create_app(engine)
    bare = TestClient(app)  # no lifespan: the batcher is not running
    assert bare.get("/healthz").json() == {"status": "ok", "info": {}}
    assert bare.get("/readyz").status_code == 503
    with TestClient(app) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["info"]["catalogue_size"] == N_ADS
        c.post("/v1/recommend", json=request())
        c.post("/v1/recommend", json=request(k=0))
        c.get("/nope")
        c.delete("/v1/ads/1000")
        text = c.get("/metrics").text
        for line in (
            'gpr_requests_total{method="POST",path="/v1/recommend",status="200"} 1.0',
            'gpr_requests_total{method="POST",path="/v1/recommend",status="422"} 1.0',
            'gpr_requests_total{method="GET",path="other",status="404"} 1.0',
            'gpr_errors_total{kind="validation"} 1.0',
            'gpr_errors_total{kind="not_found"} 1.0',
            'gpr_errors_total{kind="method_not_allowed"} 1.0',
            "gpr_batch_size_count 1.0",
            f"gpr_trie_ads {float(N_ADS)}",
            f"gpr_catalogue_version {float(engine.catalogue.version)}",
            "gpr_catalogue_day 3.0",
            "gpr_queue_depth 0.0",
            'gpr_run_info{model="fake",run="fake"} 1.0',
        ):
            assert line in text, line
        assert 'gpr_request_latency_seconds_bucket{le="0.005",path="/v1/recommend"}' in text
        assert c.get("/metrics").headers["content-type"].startswith("text/plain")
        schema = c.get("/openapi.json").json()
        assert {"/v1/recommend", "/v1/ads", "/v1/ads/{item_id}", "/healthz", "/readyz"} <= set(
            schema["paths"]
        )
        user = schema["components"]["schemas"]["UserIn"]["properties"]
        assert user["age_band"]["exclusiveMaximum"] == LIMITS["age_bands"]
        assert "413" in schema["paths"]["/v1/recommend"]["post"]["responses"]
        assert c.get("/docs").status_code == 200


def test_one_json_log_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gpr.serve.access"):
        client.post("/v1/recommend", json=request())
        client.post("/v1/recommend", json=request(k=0))
        client.get("/v1/ads/1000")
    recs = [r for r in caplog.records if r.name == "gpr.serve.access"]
    assert len(recs) == 3
    lines = [json.loads(JsonFormatter().format(r)) for r in recs]
    assert lines[0]["method"] == "POST" and lines[0]["path"] == "/v1/recommend"
    assert lines[0]["status"] == 200 and lines[0]["batch_size"] == 1
    assert lines[0]["latency_ms"] > 0 and lines[0]["level"] == "info"
    assert lines[1]["status"] == 422 and lines[1]["error"] == "validation"
    assert lines[2]["route"] == "/v1/ads/{item_id}" and lines[2]["batch_size"] is None


def test_the_schemas_are_bounded_by_the_engine_limits(engine: FakeEngine) -> None:
    engine.limits = {**LIMITS, "regions": 3}
    with TestClient(create_app(engine)) as c:
        ok = c.post("/v1/recommend", json=request())
        far = c.post("/v1/recommend", json=request(user={**request()["user"], "region": 3}))
    assert ok.status_code == 200 and far.status_code == 422
    assert far.json()["error"]["field"] == "user.region"


# --- the real engine and the command ------------------------------------------------------------
@pytest.fixture(scope="module")
def real(runs: tuple[Path, Path], tiny_world: Path) -> tuple[Any, list[dict[str, Any]]]:
    """The real Engine on the tiny run, and logged test requests as JSON bodies."""
    from gpr.market.journeys import LogData
    from gpr.serve.engine import Engine, logged_requests

    logs = LogData.load(tiny_world)
    j = logs.journeys
    pos = j.requests("test")[:4]
    engine = Engine.from_run(runs[0], day=int(j.day[pos[0]]))
    bodies = [dataclasses.asdict(r) for r in logged_requests(logs, j.request[pos], k=5)]
    return engine, bodies


def test_end_to_end_on_a_real_run(real: tuple[Any, list[dict[str, Any]]]) -> None:
    engine, bodies = real
    with TestClient(create_app(engine)) as c:
        r = c.post("/v1/recommend", json=bodies[0])
        assert r.status_code == 200, r.text
        ads = r.json()["ads"]
        assert 1 <= len(ads) <= 5
        assert all(c.get(f"/v1/ads/{a['item_id']}").json()["ad"]["live"] for a in ads)
        top = ads[0]["item_id"]
        assert c.post("/v1/ads", json={"op": "pause", "item_id": top}).status_code == 200
        try:
            for b in bodies:
                r = c.post("/v1/recommend", json=b)
                assert r.status_code == 200 and top not in [a["item_id"] for a in r.json()["ads"]]
        finally:
            c.post("/v1/ads", json={"op": "resume", "item_id": top})
        assert "featurise" in r.json()["timings_ms"]
        bad = {**bodies[0], "env": {**bodies[0]["env"], "scene": 99}}
        r = c.post("/v1/recommend", json=bad)
        assert r.status_code == 422 and r.json()["error"]["field"] == "env.scene"


def test_serve_command_errors_are_one_line(tmp_path: Path) -> None:
    r = run_cli("serve", "--run", "/nonexistent/run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "run.json" in r.stderr
    r = run_cli("serve", "--run", ".", "--max-batch", "0")
    assert r.returncode == 2 and "max-batch" in r.stderr
    (tmp_path / "run.json").write_text("{}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = run_cli("serve", "--run", str(tmp_path), "--port", port)
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_serves_and_stops_gracefully_on_sigterm(
    runs: tuple[Path, Path], real: tuple[Any, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """`gpr serve` on loopback: ready, one request answered, SIGTERM -> exit 0 after shutdown;
    stderr is JSON lines."""
    _, bodies = real
    port = _free_port()
    err = (tmp_path / "stderr").open("w")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpr.cli", "serve", "--run", str(runs[0]), "--port", str(port)],
        stderr=err,
        stdout=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, (tmp_path / "stderr").read_text()
                time.sleep(0.2)
        else:
            pytest.fail("gpr serve did not become ready in 60 s")
        req = urllib.request.Request(
            f"{base}/v1/recommend",
            data=json.dumps(bodies[0]).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read())["ads"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    lines = [json.loads(x) for x in (tmp_path / "stderr").read_text().splitlines() if x.strip()]
    msgs = [x["msg"] for x in lines]
    assert "ready" in msgs and "stopped" in msgs
    access = [x for x in lines if x["logger"] == "gpr.serve.access"]
    assert any(x["path"] == "/v1/recommend" and x["status"] == 200 for x in access)
