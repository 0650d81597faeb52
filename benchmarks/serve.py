"""Serving speed: the engine in-process, the live catalogue at 10k-1M ads, and `gpr serve` over
loopback HTTP under a fixed concurrency.

    python benchmarks/serve.py engine --run out/demo/run_gpr --ads out/demo/world/items.parquet \
        --data out/demo/world [--beam 20] [--batches 1 8 32 128] [--requests 512] \
        [--guide-weight 1.0] [--threads 1 2] [--profile]
    python benchmarks/serve.py catalogue [--sizes 10000 100000 1000000] [--updates 1000] \
        [--run R --ads A --data D --beam 20]
    python benchmarks/serve.py http --run out/demo/run_gpr --ads out/demo/world/items.parquet \
        --data out/demo/world [--concurrency 1 4 16 32 64] [--seconds 10] [--hold 60] \
        [--max-batch 32] [--max-wait-ms 2] [--journey-tail 1024] [--tcp-nodelay] \
        [--set serve.guide.weight=1]

`engine`: `Engine.recommend` on logged test-day requests (`logged_requests`, the full logged
journey of each), per batch size: latency per batch (p50 / p99 ms), requests/s, and the mean of
the engine's own timing split (featurise / decode / score, `Recommendation.timings_ms`) against
the measured wall time; with the fixed beam and the value-guided one (`serve.guide.weight=W`),
at each torch thread count.

`catalogue`: a `LiveCatalogue.from_ads` of N random ads (paths like the run's: 3 levels of 256
codes + a de-dup index of 2; random targeting), each size in its own process: build seconds,
resident memory before and after (/proc/self/status), median / p99 / max latency of pause,
resume, set_budget (budget 0 then back: each call changes the ad's liveness, so moves the
counts), spend (below the budget: no change of liveness) and add_ad, and a check that an update
is visible to the next eligibility query. With --run, also the engine's latency with that
catalogue in place of the run's ads (batch 1 and 32; the model decodes over the synthetic trie).

`http`: starts `gpr serve` on a free loopback port, checks that a pause is visible to the next
recommendation, then drives it with an asyncio httpx client that keeps C requests in flight (JSON
bodies prebuilt from logged test requests, each journey cut to its last --journey-tail events:
the server refuses journeys over 1024 events, and the engine reads only the last max_len - user
tokens - 1 of them, which `engine` checks), --seconds per C; then holds the C with the highest
throughput whose p99 <= --p99-ms (else the lowest p99) for --hold seconds; stops the server with
SIGTERM and checks that it exits 0. `client_cpu` is the load generator's own CPU time over
the wall time (it shares the machine with the server). --tcp-nodelay (a diagnostic) starts the
server through NODELAY_SHIM, which sets TCP_NODELAY on the listening socket.

Every subcommand prints a markdown table at the end (--json FILE writes the figures too).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# --- shared ---------------------------------------------------------------------------------------
def pct(xs: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MB (/proc/self/status)."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, kb = line.split(":")
            vals[key] = int(kb.split()[0]) / 1024
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def test_requests(data: str, n: int, k: int = 10) -> tuple[list[Any], int]:
    """`n` logged test-day requests spread evenly over the day (time order), and the day."""
    from gpr.market.journeys import LogData
    from gpr.serve.engine import logged_requests

    logs = LogData.load(data)
    j = logs.journeys
    pos = j.requests("test")
    pick = pos[np.unique(np.linspace(0, len(pos) - 1, min(n, len(pos))).astype(np.int64))]
    return logged_requests(logs, j.request[pick], k=k), int(j.day[pos[0]])


def tail(req: Any, n: int) -> Any:
    """The request with only its journey's last n events (n = 0: all of them)."""
    return dataclasses.replace(req, journey=req.journey[-n:]) if n > 0 else req


def write_json(path: str | None, res: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(res, indent=1, default=float))


# --- engine -------------------------------------------------------------------------------------
def time_batches(engine: Any, reqs: list[Any], batch: int, n_req: int) -> dict[str, Any]:
    """Latency per engine batch over at least max(n_req // batch, 8) batches."""
    n_batches = max(n_req // batch, 8)
    engine.recommend(reqs[:batch])  # warm-up at this shape
    lat, split = [], {"featurise": [], "decode": [], "score": []}
    t_all = time.perf_counter()
    for i in range(n_batches):
        start = (i * batch) % max(len(reqs) - batch, 1)
        t0 = time.perf_counter()
        out = engine.recommend(reqs[start : start + batch])
        lat.append(1000 * (time.perf_counter() - t0))
        for key in split:
            split[key].append(out[0].timings_ms[key])
    wall = time.perf_counter() - t_all
    mean = {key: float(np.mean(v)) for key, v in split.items()}
    return {
        "batch": batch,
        "batches": n_batches,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "req_per_s": n_batches * batch / wall,
        "featurise_ms": mean["featurise"],
        "decode_ms": mean["decode"],
        "score_ms": mean["score"],
        "split_of_wall": sum(mean.values()) / float(np.mean(lat)),
    }


def cmd_engine(a: argparse.Namespace) -> list[dict[str, Any]]:
    from gpr.core.runtime import set_threads
    from gpr.serve.engine import Engine

    reqs, day = test_requests(a.data, max(a.batches) * 4, k=10)
    mean = np.mean([len(r.journey) for r in reqs])
    print(f"{len(reqs)} test-day requests (day {day}), mean journey {mean:.0f} events", flush=True)
    modes = {"fixed": None, "guided": [f"serve.guide.weight={a.guide_weight}"]}
    engines = {
        m: Engine.from_run(a.run, ads=a.ads, beam=a.beam, day=day, overrides=o, device=a.device)
        for m, o in modes.items()
    }
    # the engine reads only the journey's last max_len - user tokens - 1 events: a client may send
    # just that tail and get the same ads (checked here on 32 requests, both beams)
    window = engines["fixed"].model.cfg.max_len
    same = True
    for engine in engines.values():
        full = engine.recommend(reqs[:32])
        short = engine.recommend([tail(r, window) for r in reqs[:32]])
        for f, t in zip(full, short, strict=True):
            same &= [(x.item_id, x.score) for x in f.ads] == [(x.item_id, x.score) for x in t.ads]
    print(f"journey tail of {window} events gives the same ads as the full journey: {same}")
    rows = []
    for threads in a.threads:
        set_threads(threads)
        for mode, engine in engines.items():
            for b in a.batches:
                r = {
                    "threads": threads,
                    "beam": f"{mode} {engine.beam}",
                    **time_batches(engine, reqs, b, a.requests),
                }
                print(json.dumps(r), flush=True)
                rows.append(r)
    if a.profile:
        set_threads(a.threads[0])
        for mode, engine in engines.items():
            prof = cProfile.Profile()
            prof.enable()
            for i in range(4):
                engine.recommend(reqs[i * 32 : (i + 1) * 32])
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
            print(f"\n## profile: {mode} beam, 4 batches of 32, by own time\n{s.getvalue()}")
    cols = ["threads", "beam", "batch", "batches", "p50_ms", "p99_ms", "req_per_s"]
    cols += ["featurise_ms", "decode_ms", "score_ms", "split_of_wall"]
    print(table(rows, cols))
    print(f"\njourney tail of {window} events gives the same ads as the full journey: {same}")
    return rows


# --- catalogue ----------------------------------------------------------------------------------
SIZES = [256, 256, 256, 2]  # the demo run's level sizes (3 levels of 256 + de-dup index)


def random_paths(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct paths of SIDS: random codes, de-dup index 0 or 1 (a third ad on one prefix is
    drawn again)."""
    from gpr.tokenizer.dedup import dedup_index

    codes = rng.integers(0, SIZES[0], size=(int(n * 1.01) + 64, 3))
    dd = dedup_index(codes)
    keep = np.flatnonzero(dd < SIZES[-1])[:n]
    assert len(keep) == n
    return np.c_[codes[keep], dd[keep]]


def random_targeting(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "target_ages": rng.integers(1, 1 << 5, n),
        "target_regions": rng.integers(1, 1 << 6, n),
        "target_gender": rng.choice([-1, -1, 0, 1], n),
    }


def one_catalogue(n: int, n_updates: int, engine_args: dict[str, Any] | None) -> dict[str, Any]:
    """Build, update and check one catalogue of n ads (run in a fresh process)."""
    import torch

    from gpr.market.ads import Ads
    from gpr.serve.catalogue import LiveCatalogue

    rng = np.random.default_rng(n)
    day = 13
    paths = random_paths(n, rng)
    tg = random_targeting(n, rng)
    ads = Ads(
        item_id=np.arange(n, dtype=np.int64),
        created_day=np.zeros(n, dtype=np.int64),
        end_day=np.full(n, 1 << 20, dtype=np.int64),
        bid=rng.lognormal(0, 0.5, n),
        price=np.ones(n),
        budget=np.full(n, 1e9),
        category=np.zeros(n, dtype=np.int64),
        subtopic=np.zeros(n, dtype=np.int64),
        _lookup=np.arange(n, dtype=np.int64),
        **tg,
    )
    rss0, _ = rss_mb()
    t0 = time.perf_counter()
    cat = LiveCatalogue.from_ads(SIZES, paths, ads, day=day)
    build_s = time.perf_counter() - t0
    rss1, peak = rss_mb()
    res: dict[str, Any] = {
        "ads": n,
        "build_s": build_s,
        "rss_before_mb": rss0,
        "rss_growth_mb": rss1 - rss0,
        "peak_rss_mb": peak,
        "trie_mb": cat._trie.nbytes() / 2**20,
        "nodes": "/".join(str(x) for x in cat._trie.n_nodes[1:]),
    }

    # updates: each op on random existing ads, then add_ad of new ones
    ids = rng.choice(n, size=n_updates, replace=False)
    ops = {
        "pause": lambda i: cat.pause(int(i)),
        "resume": lambda i: cat.resume(int(i)),
        # each call flips the ad's liveness: exhausted (budget 0), then live again
        "set_budget": lambda i: (cat.set_budget(int(i), 0.0), cat.set_budget(int(i), 1e9)),
        "spend": lambda i: cat.spend(int(i), 0.01),
    }
    for name, op in ops.items():
        lat = []
        for i in ids:
            t = time.perf_counter()
            op(i)
            lat.append(1e6 * (time.perf_counter() - t) / (2 if name == "set_budget" else 1))
        res[f"{name}_us"] = (pct(lat, 50), pct(lat, 99), max(lat))
    new_paths = random_paths(n + n_updates, np.random.default_rng(n + 1))
    taken = set(map(tuple, paths.tolist()))
    new_paths = np.asarray([p for p in new_paths.tolist() if tuple(p) not in taken][:n_updates])
    ntg = random_targeting(n_updates, rng)
    lat = []
    for j in range(n_updates):
        t = time.perf_counter()
        cat.add_ad(
            n + j,
            path=new_paths[j],
            target_ages=int(ntg["target_ages"][j]),
            target_regions=int(ntg["target_regions"][j]),
            target_gender=int(ntg["target_gender"][j]),
            created_day=0,
            end_day=1 << 20,
            bid=1.0,
            budget=1e9,
        )
        lat.append(1e6 * (time.perf_counter() - t))
    res["add_ad_us"] = (pct(lat, 50), pct(lat, 99), max(lat))
    res["rss_after_updates_mb"] = rss_mb()[0]

    # visibility: an eligible ad paused is gone from the next query, resumed it is back
    seg = 0
    t = time.perf_counter()
    before = cat.eligible_items(seg)
    res["eligible_items_ms"] = 1000 * (time.perf_counter() - t)
    victim = int(before[len(before) // 2])
    count0 = cat.eligible_count(seg)
    cat.pause(victim)
    after = cat.eligible_items(seg)
    col = int(cat.column(torch.tensor([victim]))[0])
    masked = bool(cat.mask_segments([seg])[0, col])
    ok = victim not in set(after.tolist()) and cat.eligible_count(seg) == count0 - 1 and not masked
    cat.resume(victim)
    ok &= victim in set(cat.eligible_items(seg).tolist()) and cat.eligible_count(seg) == count0
    # a new ad that targets the segment is eligible at once
    age, gender, region = (int(x[0]) for x in cat.space.split(np.asarray([seg])))
    fresh = n + n_updates
    spare = random_paths(n + n_updates + 64, np.random.default_rng(n + 2)).tolist()
    path = next(p for p in spare if int(cat.walk(torch.tensor([p]))[0]) < 0)
    cat.add_ad(
        fresh,
        path=path,
        target_ages=1 << age,
        target_regions=1 << region,
        target_gender=gender,
        created_day=0,
        end_day=1 << 20,
        bid=1.0,
        budget=1e9,
    )
    ok &= fresh in set(cat.eligible_items(seg).tolist())
    res["visible"] = bool(ok)
    res["eligible_in_segment"] = count0

    if engine_args is not None:
        res.update(engine_on(cat, engine_args))
    return res


def engine_on(live: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The run's engine decoding over `live` in place of its own ads: batch 1 and 32 latency."""
    from gpr.core.runtime import set_threads
    from gpr.serve.engine import Engine

    set_threads(1)
    e = Engine.from_run(args["run"], ads=args["ads"], beam=args["beam"])
    engine = Engine(e.run, e.model, e.cat, live, e.beam, e.score, e.guide)
    reqs, _ = test_requests(args["data"], 256, k=10)
    out = {}
    for b, n_req in ((1, 48), (32, 256)):
        r = time_batches(engine, reqs, b, n_req)
        out[f"b{b}_p50_ms"], out[f"b{b}_p99_ms"], out[f"b{b}_req_s"] = (
            r["p50_ms"],
            r["p99_ms"],
            r["req_per_s"],
        )
    return out


def cmd_catalogue(a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    eng = None
    if a.run:
        eng = {"run": a.run, "ads": a.ads, "data": a.data, "beam": a.beam}
    for n in a.sizes:
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import serve; "
            "print('RESULT', json.dumps(serve.one_catalogue(int(sys.argv[2]), int(sys.argv[3]), "
            "json.loads(sys.argv[4]))))"
        )
        t0 = time.perf_counter()
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(Path(__file__).parent),
                str(n),
                str(a.updates),
                json.dumps(eng),
            ],
            capture_output=True,
            text=True,
        )
        if p.returncode:
            sys.exit(f"catalogue of {n} failed:\n{p.stderr[-3000:]}")
        line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
        r = json.loads(line[len("RESULT ") :])
        r["process_s"] = time.perf_counter() - t0
        print(json.dumps(r), flush=True)
        rows.append(r)
    disp = []
    for r in rows:
        d = {k: v for k, v in r.items() if not k.endswith("_us")}
        for op in ("pause", "resume", "set_budget", "spend", "add_ad"):
            p50, p99, mx = r[f"{op}_us"]
            d[f"{op} µs p50/p99/max"] = f"{p50:.0f} / {p99:.0f} / {mx:,.0f}"
        disp.append(d)
    cols = ["ads", "build_s", "rss_growth_mb", "trie_mb", "nodes", "eligible_items_ms"]
    cols += [f"{op} µs p50/p99/max" for op in ("pause", "resume", "set_budget", "spend", "add_ad")]
    cols += ["visible"]
    print(table(disp, cols))
    if eng is not None:
        cols = [
            "ads",
            "b1_p50_ms",
            "b1_p99_ms",
            "b1_req_s",
            "b32_p50_ms",
            "b32_p99_ms",
            "b32_req_s",
        ]
        print()
        print(table(rows, cols))
    return rows


# --- http ---------------------------------------------------------------------------------------
# Diagnostic only (--tcp-nodelay): `gpr serve` with TCP_NODELAY on its listening socket, which
# accepted connections inherit. `gpr.serve.app.listen` makes the socket with proto 0, so asyncio's
# transports do not set TCP_NODELAY themselves (they do only for proto IPPROTO_TCP).
NODELAY_SHIM = """
import socket, sys
import gpr.serve.app as app
_listen = app.listen
def listen(host, port):
    s = _listen(host, port)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s
app.listen = listen
from gpr.cli import app as cli
sys.argv = ["gpr", *sys.argv[1:]]
cli()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gpr serve exited with {proc.returncode} before ready")
            try:
                if (await c.get(f"{url}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError("gpr serve was not ready in time")


async def load(url: str, bodies: list[bytes], conc: int, seconds: float) -> dict[str, Any]:
    """Keep `conc` requests in flight for `seconds`; latency of each, errors by kind."""
    import httpx

    lat: list[float] = []
    batch: list[int] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds
    nxt = 0
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal nxt
        while time.perf_counter() < stop:
            body = bodies[nxt % len(bodies)]
            nxt += 1
            t0 = time.perf_counter()
            try:
                r = await c.post(f"{url}/v1/recommend", content=body, headers=headers)
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            if r.status_code != 200:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                continue
            lat.append(1000 * (time.perf_counter() - t0))
            batch.append(int(r.json()["batch_size"]))

    async with httpx.AsyncClient(limits=limits, timeout=30) as c:
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(c) for _ in range(conc)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "concurrency": conc,
        "seconds": wall,
        "ok": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "req_per_s": len(lat) / wall,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "mean_batch": float(np.mean(batch)) if batch else float("nan"),
        "client_cpu": cpu / wall,  # the load generator's own share of one core
    }


async def visibility(url: str, body: bytes) -> dict[str, Any]:
    """Pause the top ad of a request, send it again (the ad must be gone), resume; HTTP update
    latency over 50 pause / resume pairs."""
    import httpx

    h = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as c:
        first = (await c.post(f"{url}/v1/recommend", content=body, headers=h)).json()
        top = first["ads"][0]["item_id"]
        lat = []
        for op in ["pause", "resume"] * 50:
            t0 = time.perf_counter()
            r = await c.post(f"{url}/v1/ads", json={"op": op, "item_id": top})
            lat.append(1000 * (time.perf_counter() - t0))
            assert r.status_code == 200, r.text
        r = await c.post(f"{url}/v1/ads", json={"op": "pause", "item_id": top})
        paused_version = r.json()["catalogue_version"]
        second = (await c.post(f"{url}/v1/recommend", content=body, headers=h)).json()
        await c.post(f"{url}/v1/ads", json={"op": "resume", "item_id": top})
        third = (await c.post(f"{url}/v1/recommend", content=body, headers=h)).json()
    gone = top not in [x["item_id"] for x in second["ads"]]
    back = top in [x["item_id"] for x in third["ads"]]
    return {
        "top_ad": top,
        "gone_after_pause": gone,
        "back_after_resume": back,
        "version_seen": second["catalogue_version"] >= paused_version,
        "update_p50_ms": pct(lat, 50),
        "update_p99_ms": pct(lat, 99),
    }


def drive(cmd: list[str], log: Any, url: str, bodies: list[bytes], a: argparse.Namespace) -> Any:
    """Start the server, check visibility, sweep, hold, stop it."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT)
    res: dict[str, Any] = {"command": cmd}
    try:
        t0 = time.perf_counter()
        asyncio.run(wait_ready(url, proc, 180))
        res["startup_s"] = time.perf_counter() - t0
        res["visibility"] = asyncio.run(visibility(url, bodies[0]))
        print(json.dumps(res["visibility"]), flush=True)
        asyncio.run(load(url, bodies, min(a.concurrency), 3))  # warm-up, not reported
        sweep = []
        for c in a.concurrency:
            r = asyncio.run(load(url, bodies, c, a.seconds))
            print(json.dumps(r), flush=True)
            sweep.append(r)
        ok = [r for r in sweep if r["p99_ms"] <= a.p99_ms and r["errors"] == 0]
        best = (
            max(ok, key=lambda r: r["req_per_s"]) if ok else min(sweep, key=lambda r: r["p99_ms"])
        )
        res["sweep"], res["chosen"] = sweep, best["concurrency"]
        res["chosen_why"] = (
            f"highest throughput with p99 <= {a.p99_ms:g} ms"
            if ok
            else f"no concurrency had p99 <= {a.p99_ms:g} ms: the lowest p99"
        )
        res["hold"] = (
            asyncio.run(load(url, bodies, best["concurrency"], a.hold)) if a.hold else None
        )
        if res["hold"]:
            print(json.dumps(res["hold"]), flush=True)
    finally:
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            res["exit_code"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            res["exit_code"] = "killed after 60 s"
        res["shutdown_s"] = time.perf_counter() - t0
    return res


def cmd_http(a: argparse.Namespace) -> dict[str, Any]:
    reqs, day = test_requests(a.data, a.pool, k=10)
    bodies = [json.dumps(dataclasses.asdict(tail(r, a.journey_tail))).encode() for r in reqs]
    print(
        f"{len(bodies)} bodies, mean {np.mean([len(b) for b in bodies]) / 1024:.1f} KiB", flush=True
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    launch = ["-c", NODELAY_SHIM] if a.tcp_nodelay else ["-m", "gpr.cli"]
    cmd = [sys.executable, *launch, "serve", "--run", a.run, "--port", str(port)]
    cmd += ["--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms)]
    cmd += ["--threads", str(a.threads), "--day", str(day)]
    if a.ads:
        cmd += ["--ads", a.ads]
    if a.beam:
        cmd += ["--beam", str(a.beam)]
    for s in a.set or []:
        cmd += ["--set", s]
    print(" ".join(cmd).replace(NODELAY_SHIM, "NODELAY_SHIM"), flush=True)
    log_path = Path(tempfile.mkdtemp(prefix="gpr_serve_")) / "serve.log"
    with open(log_path, "wb") as log:
        res = drive(cmd, log, url, bodies, a)
    res["log"] = str(log_path)
    cols = ["run", "concurrency", "seconds", "ok", "errors", "req_per_s", "p50_ms", "p99_ms"]
    cols += ["mean_batch", "client_cpu"]
    rows = [{"run": "sweep", **r} for r in res["sweep"]]
    if res["hold"]:
        rows.append({"run": f"hold ({res['chosen_why']})", **res["hold"]})
    print(table(rows, cols))
    v = res["visibility"]
    print(
        f"\nstartup {res['startup_s']:.1f} s; pause visible to the next request: "
        f"{v['gone_after_pause']} (resume: {v['back_after_resume']}); HTTP update p50 "
        f"{v['update_p50_ms']:.1f} ms, p99 {v['update_p99_ms']:.1f} ms; SIGTERM -> exit "
        f"{res['exit_code']} in {res['shutdown_s']:.1f} s; server log {res['log']}"
    )
    return res


# --- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def run_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--run", required=required, help="a trained gpr run")
        p.add_argument(
            "--ads", help="items.parquet whose ads replace the run's (`gpr serve --ads`)"
        )
        p.add_argument("--data", required=required, help="the run's world (logged test requests)")
        p.add_argument("--beam", type=int, default=20, help="beam per MTP head (default 20)")
        p.add_argument("--json", help="also write the figures here")

    e = sub.add_parser("engine", help="in-process engine latency per batch size")
    run_args(e)
    e.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    e.add_argument(
        "--requests", type=int, default=512, help="requests per batch size (>= 8 batches)"
    )
    e.add_argument("--guide-weight", type=float, default=1.0)
    e.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    e.add_argument("--profile", action="store_true", help="cProfile 4 batches of 32 per beam")
    e.add_argument(
        "--device", default="cpu", help="cpu | cuda | auto (GPU: the static-trie decoding path)"
    )

    c = sub.add_parser("catalogue", help="live catalogue build, memory, updates")
    run_args(c, required=False)
    c.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    c.add_argument("--updates", type=int, default=1000, help="calls per update operation")

    h = sub.add_parser("http", help="loopback load test of `gpr serve`")
    run_args(h)
    h.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    h.add_argument("--seconds", type=float, default=10, help="per concurrency of the sweep")
    h.add_argument("--hold", type=float, default=60, help="seconds at the chosen concurrency")
    h.add_argument("--p99-ms", type=float, default=100)
    h.add_argument("--max-batch", type=int, default=32)
    h.add_argument("--max-wait-ms", type=float, default=2)
    h.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    h.add_argument("--pool", type=int, default=2000, help="distinct logged requests to cycle")
    h.add_argument("--set", nargs="*", help="serve.field=value overrides (`gpr serve --set`)")
    h.add_argument(
        "--journey-tail",
        type=int,
        default=1024,
        help="send each journey's last N events (default 1024, the server's limit; 0: all)",
    )
    h.add_argument(
        "--tcp-nodelay",
        action="store_true",
        help="diagnostic: serve with TCP_NODELAY on the listening socket (see NODELAY_SHIM)",
    )

    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fn = {"engine": cmd_engine, "catalogue": cmd_catalogue, "http": cmd_http}[a.cmd]
    t0 = time.perf_counter()
    res = fn(a)
    print(f"\n{a.cmd}: {time.perf_counter() - t0:.0f} s")
    write_json(a.json, res)


if __name__ == "__main__":
    main()
