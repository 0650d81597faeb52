"""The live eligible-ad catalogue (serve.catalogue) against the brute-force rule
(market.ads.eligible_mask + pause): after random update sequences, through legal(), mask() and the
real beam search."""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gpr.core.config import TokenizerConfig
from gpr.core.errors import GprInputError
from gpr.core.run import CATALOGUE, FORMAT_VERSION, INFO, MANIFEST
from gpr.market.ads import Ads, Users, eligible_mask
from gpr.model.gpr import beam_search
from gpr.serve.catalogue import Eligibility, LiveCatalogue
from gpr.serve.segments import SegmentSpace
from gpr.tokenizer.dedup import dedup_index, extend_dedup
from gpr.tokenizer.methods import build_tokenizer
from gpr.tokenizer.pipeline import sids_table

SPACE = SegmentSpace(5, 2, 6)  # the ad world's: 60 segments
FIELDS = ("target_ages", "target_regions", "target_gender", "created_day", "end_day")


def random_ads(rng: np.random.Generator, sizes: list[int], n: int, id0: int = 0) -> dict:
    """n ads with unique random paths (fewer when the trie is too small) and random attributes."""
    codes = rng.integers(0, sizes[:-1], (n, len(sizes) - 1))
    dd = dedup_index(codes)
    keep = dd < sizes[-1]
    m = int(keep.sum())
    created = rng.integers(0, 6, m)
    return {
        "item_id": id0 + rng.permutation(3 * n)[:m],
        "path": np.c_[codes[keep], dd[keep]],
        "target_ages": np.where(rng.random(m) < 0.3, 31, rng.integers(0, 32, m)),
        "target_regions": np.where(rng.random(m) < 0.3, 63, rng.integers(0, 64, m)),
        "target_gender": rng.integers(-1, 2, m),
        "created_day": created,
        "end_day": created + rng.integers(0, 6, m),
        "bid": rng.uniform(0.1, 2.0, m),
        "budget": rng.uniform(0.0, 10.0, m),
        "spend": np.where(rng.random(m) < 0.7, 0.0, rng.uniform(0, 10, m)),
        "paused": rng.random(m) < 0.1,
    }


def as_ads(t: dict) -> Ads:
    ids = np.asarray(t["item_id"], dtype=np.int64)
    lookup = np.full(int(ids.max(initial=0)) + 1, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    n = len(ids)
    return Ads(
        item_id=ids,
        **{k: np.asarray(t[k], dtype=np.int64) for k in FIELDS},
        bid=np.asarray(t["bid"], dtype=np.float64),
        price=np.ones(n),
        budget=np.asarray(t["budget"], dtype=np.float64),
        category=np.zeros(n, dtype=np.int64),
        subtopic=np.zeros(n, dtype=np.int64),
        _lookup=lookup,
    )


def segment_users(space: SegmentSpace) -> Users:
    """User id s has the attributes of segment s."""
    age, gender, region = space.split(np.arange(space.n))
    return Users(age, gender, region, np.zeros(space.n, dtype=np.int64))


def brute(t: dict, users: Users, user_ids: np.ndarray, day: int) -> np.ndarray:
    """(B, A) the project's rule, plus pause."""
    if len(t["item_id"]) == 0:
        return np.zeros((len(user_ids), 0), dtype=bool)
    days = np.full(len(user_ids), day)
    ok = eligible_mask(as_ads(t), users, user_ids, days, np.asarray(t["spend"], dtype=float))
    return ok & ~np.asarray(t["paused"], dtype=bool)[None, :]


def build(t: dict, sizes: list[int], day: int) -> LiveCatalogue:
    return LiveCatalogue.from_ads(
        sizes, t["path"], as_ads(t), day=day, spend=t["spend"], paused=t["paused"], space=SPACE
    )


def reachable(cat: LiveCatalogue, counts: Any, rows: np.ndarray) -> np.ndarray:
    """(B, A) the leaves every row's decoding can reach through legal() (the whole trie)."""
    b = len(rows)
    nodes = torch.zeros(b, dtype=torch.long)
    r = torch.as_tensor(rows, dtype=torch.long)
    for lv in range(cat.depth):
        ok = cat.legal(lv, nodes, counts, r)
        i, code = torch.nonzero(ok, as_tuple=True)
        nodes, r = cat.child[lv][nodes[i], code], r[i]
    out = np.zeros((b, len(cat)), dtype=bool)
    out[r.numpy(), nodes.numpy()] = True
    return out


def check_against_brute(cat: LiveCatalogue, t: dict) -> None:
    users = segment_users(cat.space)
    segs = np.arange(cat.space.n)
    want = brute(t, users, segs, cat.day)
    assert np.array_equal(cat.items.numpy(), np.asarray(t["item_id"], dtype=np.int64))
    assert np.array_equal(cat.mask(users, segs).numpy(), want)
    # soundness and completeness of decoding under the live counts and under the stock counts
    assert np.array_equal(reachable(cat, cat.eligibility(segs), segs), want)
    stock = cat.eligible_counts(torch.from_numpy(want))
    assert np.array_equal(reachable(cat, stock, segs), want)
    for s in (0, 17, 59):
        assert np.array_equal(np.sort(cat.eligible_items(s)), np.sort(t["item_id"][want[s]]))
        assert cat.eligible_count(s) == want[s].sum()


# --- (a) a built catalogue equals the brute-force rule -------------------------------------------
def test_built_catalogue_matches_eligible_mask() -> None:
    rng = np.random.default_rng(3)
    sizes = [6, 6, 3]
    t = random_ads(rng, sizes, 120)
    for day in (0, 3, 7):
        cat = build(t, sizes, day)
        check_against_brute(cat, t)
        users = Users(*(rng.integers(0, k, 40) for k in (5, 2, 6)), np.zeros(40, dtype=np.int64))
        uids = rng.integers(0, 40, 25)
        want = brute(t, users, uids, day)
        assert np.array_equal(cat.mask(users, uids).numpy(), want)
        got = reachable(cat, cat.eligibility(users=users, user_ids=uids), np.arange(len(uids)))
        assert np.array_equal(got, want)


def test_real_beam_search_serves_only_eligible_ads() -> None:
    """model.gpr.beam_search with the live catalogue as its trie and an Eligibility as counts:
    a beam as wide as the catalogue returns exactly the eligible ads of each request."""
    rng = np.random.default_rng(5)
    sizes = [5, 5, 3]
    t = random_ads(rng, sizes, 80)
    cat = build(t, sizes, 3)

    class FakePTD:
        def logits(self, pre: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
            return [torch.randn(pre.shape[0], s) for s in sizes]

    class FakeModel:
        ptd = FakePTD()
        training = True  # the teacher-forced decoder path (no key/value cache to fake)

        def code_inputs(self, codes: torch.Tensor) -> torch.Tensor:
            return codes

    segs = rng.integers(0, SPACE.n, 12)
    items, logp = beam_search(FakeModel(), torch.zeros(12, 1), cat, len(cat), cat.eligibility(segs))
    want = brute(t, segment_users(SPACE), segs, 3)
    for r in range(12):
        got = items[r][items[r] >= 0].numpy()
        assert np.array_equal(np.sort(got), np.sort(t["item_id"][want[r]]))
        assert torch.isfinite(logp[r][items[r] >= 0]).all()


# --- (b) random update sequences ------------------------------------------------------------------
SIZES = [3, 3, 2]  # 18 full paths: collisions and full de-dup levels happen


class CatalogueMachine(RuleBasedStateMachine):
    """The catalogue against a plain dict of ad attributes, checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.t: dict = {}
        self.cat: LiveCatalogue | None = None
        self.next_id = 1000

    @initialize(seed=st.integers(0, 2**16), n=st.integers(0, 12), day=st.integers(0, 8))
    def start(self, seed: int, n: int, day: int) -> None:
        t = random_ads(np.random.default_rng(seed), SIZES, n)
        self.t = {k: list(v) for k, v in t.items()}
        if n == 0:
            self.cat = LiveCatalogue(SIZES, SPACE, day=day)
        else:
            self.cat = build(t, SIZES, day)

    def _arrays(self) -> dict:
        return {k: np.asarray(v) for k, v in self.t.items()}

    def _pick(self, i: int) -> int | None:
        ids = self.t["item_id"]
        return int(ids[i % len(ids)]) if ids else None

    @rule(
        path=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 1)),
        ages=st.integers(0, 31),
        regions=st.integers(0, 63),
        gender=st.integers(-1, 1),
        created=st.integers(0, 8),
        length=st.integers(0, 6),
        budget=st.floats(0, 10),
        paused=st.booleans(),
    )
    def add(
        self,
        path: tuple,
        ages: int,
        regions: int,
        gender: int,
        created: int,
        length: int,
        budget: float,
        paused: bool,
    ) -> None:
        assert self.cat is not None
        taken = any(tuple(p) == path for p in self.t["path"])
        kw = dict(
            target_ages=ages,
            target_regions=regions,
            target_gender=gender,
            created_day=created,
            end_day=created + length,
            bid=1.0,
            budget=budget,
            paused=paused,
        )
        v = self.cat.version
        if taken:
            with pytest.raises(GprInputError) as e:
                self.cat.add_ad(self.next_id, path=list(path), **kw)
            assert e.value.field == "path" and self.cat.version == v
            return
        self.cat.add_ad(self.next_id, path=list(path), **kw)
        assert self.cat.version > v
        row = {
            "item_id": self.next_id,
            "path": np.asarray(path),
            "target_ages": ages,
            "target_regions": regions,
            "target_gender": gender,
            "created_day": created,
            "end_day": created + length,
            "bid": 1.0,
            "budget": budget,
            "spend": 0.0,
            "paused": paused,
        }
        for k, x in row.items():
            self.t[k].append(x)
        self.next_id += 1

    @rule(i=st.integers(0, 100), on=st.booleans())
    def pause_or_resume(self, i: int, on: bool) -> None:
        assert self.cat is not None
        item = self._pick(i)
        if item is None:
            return
        (self.cat.pause if on else self.cat.resume)(item)
        self.t["paused"][self.t["item_id"].index(item)] = on

    @rule(i=st.integers(0, 100), budget=st.floats(0, 10))
    def set_budget(self, i: int, budget: float) -> None:
        assert self.cat is not None
        item = self._pick(i)
        if item is None:
            return
        self.cat.set_budget(item, budget)
        self.t["budget"][self.t["item_id"].index(item)] = budget

    @rule(i=st.integers(0, 100), amount=st.floats(0, 6))
    def spend(self, i: int, amount: float) -> None:
        assert self.cat is not None
        item = self._pick(i)
        if item is None:
            return
        self.cat.spend(item, amount)
        self.t["spend"][self.t["item_id"].index(item)] += amount
        assert self.cat.get(item)["spend"] == self.t["spend"][self.t["item_id"].index(item)]

    @rule(day=st.integers(0, 12))
    def set_day(self, day: int) -> None:
        assert self.cat is not None
        self.cat.set_day(day)

    @invariant()
    def matches_brute_force(self) -> None:
        if self.cat is None:
            return
        t = self._arrays()
        if len(t["item_id"]) == 0:
            t["path"] = np.zeros((0, len(SIZES)), dtype=np.int64)
            t["item_id"] = np.zeros(0, dtype=np.int64)
        check_against_brute(self.cat, t)


TestCatalogueMachine = CatalogueMachine.TestCase
TestCatalogueMachine.settings = settings(
    max_examples=50,
    stateful_step_count=15,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- (c) ads added by embedding, with a saved tokenizer and from a run ---------------------------
@pytest.fixture(scope="module")
def tok_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A fitted RQ-Kmeans (2 levels x 4 codes) saved as a run's catalogue; 60 ads."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 6)) * 3
    x = (centers[rng.integers(0, 8, 300)] + rng.normal(size=(300, 6))).astype(np.float32)
    cfg = TokenizerConfig.model_validate(
        dict(method="rq_kmeans", levels=2, codebook_size=4, kmeans_iters=5, device="cpu")
    )
    tok = build_tokenizer(cfg, seed=1)
    tok.fit(x)
    run = tmp_path_factory.mktemp("run")
    out = run / CATALOGUE
    tok.save(out)
    codes = tok.encode(x[:60])
    dedup = dedup_index(codes)
    pq.write_table(
        sids_table(np.arange(60), codes, dedup, ["ad"] * 60, np.zeros(60, dtype=bool), 4),
        out / "sids.parquet",
    )
    (run / INFO).write_text(json.dumps({"model": "gpr"}))
    (run / MANIFEST).write_text(json.dumps({"format": FORMAT_VERSION, "files": {}}))
    return run, x, dedup


def world_ads(n: int) -> dict:
    return {
        "item_id": np.arange(n),
        "target_ages": np.full(n, 31),
        "target_regions": np.full(n, 63),
        "target_gender": np.full(n, -1),
        "created_day": np.zeros(n, dtype=np.int64),
        "end_day": np.full(n, 10),
        "bid": np.ones(n),
        "budget": np.full(n, 5.0),
    }


def test_add_by_embedding_uses_the_saved_tokenizer(tok_world: tuple) -> None:
    run, x, dedup = tok_world
    cat = LiveCatalogue.from_run(run, as_ads(world_ads(60)), day=1)
    assert cat.sizes == [4, 4, int(dedup.max()) + 1] and len(cat) == 60
    tok = cat.tokenizer
    old = cat.paths.numpy().copy()
    kw = dict(
        target_ages=3,
        target_regions=1,
        target_gender=0,
        created_day=0,
        end_day=5,
        bid=1.0,
        budget=2.0,
    )
    # an embedding whose path has room left on its de-dup level
    room = [
        i
        for i in range(60, 300)
        if (dedup[(old[:, :2] == tok.encode(x[i : i + 1])[0]).all(1)].max(initial=-1)) + 1
        < cat.sizes[-1]
    ]
    i = room[0]
    path = cat.add_ad(1000, embedding=x[i], **kw)
    codes = tok.encode(x[i : i + 1])
    assert np.array_equal(path[:2], codes[0])
    assert path[2] == extend_dedup(old[:, :2], old[:, 2], codes)[0]
    assert cat.get(1000)["path"] == path.tolist() and cat.get(1000)["live"]
    seg = int(SPACE.of(np.asarray(0), np.asarray(0), np.asarray(0)))
    assert 1000 in cat.eligible_items(seg)
    assert 1000 not in cat.eligible_items(
        int(SPACE.of(np.asarray(0), np.asarray(1), np.asarray(0)))
    )
    # fill that path's de-dup level: the next ad on it is refused, nothing changes
    n = 1001
    while cat.get(1000)["path"][:2] == path[:2].tolist():
        try:
            cat.add_ad(n, embedding=x[i], **kw)
        except GprInputError as e:
            assert e.field == "dedup"
            break
        n += 1
    v, size = cat.version, len(cat)
    with pytest.raises(GprInputError, match="de-dup level is full") as e:
        cat.add_ad(n, embedding=x[i], **kw)
    assert e.value.field == "dedup" and (cat.version, len(cat)) == (v, size)
    with pytest.raises(GprInputError) as e:
        cat.add_ad(n, embedding=x[i, :3], **kw)
    assert e.value.field == "embedding"


def test_from_run_refuses_ads_without_sids(tok_world: tuple) -> None:
    run, _, _ = tok_world
    t = world_ads(61)
    with pytest.raises(GprInputError, match="no semantic ID") as e:
        LiveCatalogue.from_run(run, as_ads(t), day=0)
    assert e.value.field == "item_id" and e.value.row == 60


# --- (d) errors ----------------------------------------------------------------------------------
def test_errors_name_the_field() -> None:
    rng = np.random.default_rng(1)
    t = random_ads(rng, [4, 4, 2], 20)
    cat = build(t, [4, 4, 2], 2)
    free = next(
        [a, b, c]
        for a in range(4)
        for b in range(4)
        for c in range(2)
        if not (t["path"] == [a, b, c]).all(1).any()
    )
    kw: dict[str, Any] = dict(
        target_ages=1,
        target_regions=1,
        target_gender=-1,
        created_day=0,
        end_day=3,
        bid=1.0,
        budget=1.0,
    )
    known = int(t["item_id"][0])
    cases: list[tuple[str, Any]] = [
        ("item_id", lambda: cat.pause(99999)),
        ("item_id", lambda: cat.resume(-1)),
        ("item_id", lambda: cat.set_budget(99999, 1.0)),
        ("item_id", lambda: cat.spend(99999, 1.0)),
        ("item_id", lambda: cat.get(99999)),
        ("item_id", lambda: cat.add_ad(known, path=free, **kw)),
        ("item_id", lambda: cat.add_ad(-5, path=free, **kw)),
        ("path", lambda: cat.add_ad(500, path=t["path"][0], **kw)),
        ("path", lambda: cat.add_ad(500, path=[0, 0, 2], **kw)),
        ("path", lambda: cat.add_ad(500, path=[0, 0], **kw)),
        ("path", lambda: cat.add_ad(500, path=[0.5, 0, 0], **kw)),
        ("path", lambda: cat.add_ad(500, **kw)),
        ("embedding", lambda: cat.add_ad(500, embedding=np.zeros(3), **kw)),
        ("bid", lambda: cat.add_ad(500, path=free, **{**kw, "bid": -1.0})),
        ("bid", lambda: cat.add_ad(500, path=free, **{**kw, "bid": float("nan")})),
        ("budget", lambda: cat.add_ad(500, path=free, **{**kw, "budget": -0.5})),
        ("budget", lambda: cat.add_ad(500, path=free, **{**kw, "budget": float("nan")})),
        ("budget", lambda: cat.set_budget(known, float("nan"))),
        ("budget", lambda: cat.set_budget(known, -1.0)),
        ("amount", lambda: cat.spend(known, -1.0)),
        ("amount", lambda: cat.spend(known, float("inf"))),
        ("end_day", lambda: cat.add_ad(500, path=free, **{**kw, "end_day": -1})),
        ("target_ages", lambda: cat.add_ad(500, path=free, **{**kw, "target_ages": 32})),
        ("target_regions", lambda: cat.add_ad(500, path=free, **{**kw, "target_regions": -1})),
        ("target_gender", lambda: cat.add_ad(500, path=free, **{**kw, "target_gender": 2})),
        ("day", lambda: cat.set_day(1.5)),
        ("age_band", lambda: cat.mask(Users(*(np.asarray([v]) for v in (-1, 0, 0, 0))), [0])),
        ("user_id", lambda: cat.eligibility(users=segment_users(SPACE), user_ids=[60])),
        ("segment", lambda: cat.eligible_items(60)),
        ("eligible", lambda: cat.eligible_counts(torch.ones(2, 3, dtype=torch.bool))),
    ]
    before = (cat.version, len(cat), cat.get(known))
    for field, call in cases:
        with pytest.raises(GprInputError) as e:
            call()
        assert e.value.field == field, (field, str(e.value))
    assert (cat.version, len(cat), cat.get(known)) == before
    with pytest.raises(GprInputError) as e:  # a batch is refused whole
        cat.add_ads(np.asarray([700, 700]), np.asarray([free, free]), **kw)
    assert e.value.field == "item_id" and len(cat) == before[1]
    with pytest.raises(GprInputError) as e:
        cat.add_ads(np.asarray([700, 701]), np.asarray([free, free]), **kw)
    assert e.value.field == "path" and e.value.row == 1 and len(cat) == before[1]


def test_state_and_version() -> None:
    cat = LiveCatalogue([2, 2], SPACE, day=0)
    cat.add_ad(
        7,
        path=[1, 0],
        target_ages=31,
        target_regions=63,
        target_gender=-1,
        created_day=0,
        end_day=2,
        bid=1.0,
        budget=3.0,
    )
    seg = 0
    assert cat.eligible_items(seg).tolist() == [7] and cat.version == 1
    cat.spend(7, 2.0)
    assert cat.get(7)["live"] and not cat.get(7)["exhausted"]
    cat.spend(7, 1.0)  # spend reaches the budget: exhausted
    assert cat.get(7)["exhausted"] and cat.eligible_items(seg).tolist() == []
    cat.set_budget(7, 4.0)
    assert cat.eligible_items(seg).tolist() == [7]
    cat.pause(7)
    assert cat.eligible_count(seg) == 0
    cat.resume(7)
    cat.set_day(2)  # flight over
    assert not cat.get(7)["in_flight"] and cat.eligible_count(seg) == 0
    elig = cat.eligibility(np.asarray([seg]))
    assert isinstance(elig, Eligibility) and elig.version == cat.version == 7 and elig.day == 2
    # a huge item id goes to the sparse index, not a huge lookup array
    cat.add_ad(
        2**39,
        path=[0, 1],
        target_ages=1,
        target_regions=1,
        target_gender=1,
        created_day=0,
        end_day=9,
        bid=1.0,
        budget=1.0,
    )
    assert cat.get(2**39)["column"] == 1 and cat._col.nbytes < 2**24
    assert cat.column(torch.tensor([7, 2**39, 5, -1])).tolist() == [0, 1, -1, -1]
    seg = int(SPACE.of(np.asarray(0), np.asarray(1), np.asarray(0)))
    assert cat.eligible_items(seg).tolist() == [2**39]
    assert cat.walk(torch.tensor([[0, 1], [1, 0], [1, 1]])).tolist() == [1, 0, -1]
    assert cat.parents(torch.tensor([[0, 1], [1, 1]])).tolist() == [[0, 1], [0, 0]]


def test_concurrent_updates_and_decoding() -> None:
    """A writer thread updates while readers decode through legal(): no errors, and afterwards the
    catalogue equals the brute-force rule."""
    rng = np.random.default_rng(4)
    sizes = [4, 4, 3]
    t = random_ads(rng, sizes, 40)
    cat = build(t, sizes, 2)
    segs = np.arange(SPACE.n)
    errors: list[BaseException] = []
    done = threading.Event()

    rounds = [0]

    def read() -> None:
        try:
            while not done.is_set():
                reachable(cat, cat.eligibility(segs), segs)
                cat.mask_segments(segs)
                rounds[0] += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for th in readers:
        th.start()
    free = [
        [a, b, c]
        for a in range(4)
        for b in range(4)
        for c in range(3)
        if not (t["path"] == [a, b, c]).all(1).any()
    ]
    t = {k: list(v) for k, v in t.items()}
    for k in range(300):
        if k % 10 == 0:
            time.sleep(0.002)  # let the readers in
        i = int(rng.integers(len(t["item_id"])))
        item = int(t["item_id"][i])
        op = k % 5
        if op == 0:
            on = bool(rng.random() < 0.5)
            (cat.pause if on else cat.resume)(item)
            t["paused"][i] = on
        elif op == 1:
            cat.spend(item, 0.5)
            t["spend"][i] += 0.5
        elif op == 2:
            t["budget"][i] = float(rng.uniform(0, 10))
            cat.set_budget(item, t["budget"][i])
        elif op == 3 and free:
            row = {
                "item_id": 10_000 + k,
                "path": np.asarray(free.pop()),
                "target_ages": 31,
                "target_regions": 63,
                "target_gender": -1,
                "created_day": 0,
                "end_day": 9,
                "bid": 1.0,
                "budget": 3.0,
                "spend": 0.0,
                "paused": False,
            }
            cat.add_ad(
                row["item_id"],
                path=row["path"],
                **{f: row[f] for f in (*FIELDS, "bid", "budget")},
            )
            for f, v in row.items():
                t[f].append(v)
        else:
            cat.set_day(int(rng.integers(0, 10)))
    done.set()
    for th in readers:
        th.join()
    assert not errors, errors[0]
    assert rounds[0] > 10
    check_against_brute(cat, {k: np.asarray(v) for k, v in t.items()})


# --- (e) scale -----------------------------------------------------------------------------------
def test_200k_build_and_update_latency() -> None:
    rng = np.random.default_rng(2)
    n, sizes = 200_000, [64, 64, 64, 16]
    t = random_ads(rng, sizes, n)
    t0 = time.perf_counter()
    cat = build(t, sizes, 3)
    build_s = time.perf_counter() - t0
    assert len(cat) == n and build_s < 30
    ids = t["item_id"]
    lat = []
    for k in range(300):
        item = int(ids[rng.integers(len(ids))])
        s = time.perf_counter()
        if k % 3 == 0:
            cat.pause(item)
        elif k % 3 == 1:
            cat.spend(item, 1.0)
        else:
            cat.set_budget(item, 5.0)
        lat.append(time.perf_counter() - s)
    free = next(
        [a, b, c, 0]
        for a, b, c in rng.integers(0, 64, (100, 3))
        if cat.walk(torch.tensor([[a, b, c, 0]]))[0] < 0
    )
    s = time.perf_counter()
    cat.add_ad(
        10**7,
        path=free,
        target_ages=31,
        target_regions=63,
        target_gender=-1,
        created_day=0,
        end_day=9,
        bid=1.0,
        budget=1.0,
    )
    lat.append(time.perf_counter() - s)
    assert statistics.median(lat) < 5e-3, statistics.median(lat)
    segs = np.arange(0, 60, 7)
    assert np.array_equal(
        cat.mask(segment_users(SPACE), segs).numpy().sum(1),
        [cat.eligible_count(int(s)) for s in segs],
    )
