"""The inference engine: serving requests in, ranked ads out, from a Run alone (spec §5).

A request carries the user's attributes, their recent journey (oldest first) and the environment
of the request. It becomes the model's tokens exactly as training saw them (`model.journey`: the
user's U tokens, the journey's O / E / I tokens, and the request's own E token, where the model
predicts). Decoding runs inside the live catalogue (`serve.catalogue`): only ads eligible for
that user at that moment can be generated. The union of the MTP heads' beams is ranked by the
run's serving score (`policy.generative.serving_score`), and each ad comes with HTE's pCTR, pCVR
and eCPM when the model has HTE.

Journey items the run does not know (no semantic ID: organic items or ads added after training)
enter as tokens without an item: their type, time and environment are kept.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpr.core.config import GprConfig, ServeScore, ValueGuide, serve_config
from gpr.core.errors import GprInputError
from gpr.core.run import Run
from gpr.data.schema import ACTIONS
from gpr.market.ads import Ads, read_ad_table
from gpr.market.journeys import TYPE_CODE, LogData
from gpr.market.policy import ENV_FIELDS
from gpr.model.gpr import GPRModel
from gpr.model.journey import (
    ENV_SIZES,
    USER_FIELD_SIZES,
    USER_FIELDS,
    Batch,
    E,
    TokenStreams,
    collate,
    tail_windows,
)
from gpr.model.prepare import Catalogue
from gpr.model.registry import load_model
from gpr.model.thoughts import window_thoughts
from gpr.model.trie import Trie
from gpr.policy.generative import serving_score
from gpr.serve.catalogue import LiveCatalogue

USER_LIMIT = dict(
    zip(USER_FIELDS, ("age_bands", "genders", "regions", "activity_tiers"), strict=True)
)
ENV_LIMIT = dict(zip(ENV_FIELDS, ("scenes", "slots", "devices", "hours"), strict=True))
# value ranges of the request fields the model embeds
LIMITS = {
    **dict(zip(USER_LIMIT.values(), USER_FIELD_SIZES, strict=True)),
    **dict(zip(ENV_LIMIT.values(), ENV_SIZES, strict=True)),
    "actions": len(ACTIONS),
}


@dataclass
class UserFeatures:
    age_band: int
    gender: int
    region: int
    activity_tier: int


@dataclass
class Event:
    """One past event of the user's journey, oldest first."""

    token_type: str  # "O" organic item view, "E" ad request, "I" ad impression
    timestamp: int  # seconds
    item_id: int = -1  # O and I events: the item; E: -1
    scene: int = -1
    slot: int = -1
    device: int = -1
    hour: int = -1
    action: int = -1  # I events: 0 impression, 1 click, 2 conversion


@dataclass
class Env:
    scene: int
    slot: int
    device: int
    hour: int


@dataclass
class ServeRequest:
    user: UserFeatures
    journey: list[Event]
    env: Env
    timestamp: int
    k: int = 10


@dataclass
class ServedAd:
    item_id: int
    score: float  # the serving score that ranked it
    logp: float  # log p of its semantic-ID path (with the item head: the combined score)
    pctr: float | None  # HTE's estimates (None without HTE)
    pcvr: float | None
    ecpm: float | None  # 1000 x bid x pCTR x pCVR
    bid: float


@dataclass
class Recommendation:
    ads: list[ServedAd]
    timings_ms: dict[str, float] = field(default_factory=dict)


class Engine:
    """A generative run served over a live catalogue; `recommend` is safe from one thread at a
    time per engine plus concurrent catalogue updates (the catalogue has its own lock)."""

    def __init__(
        self,
        run: Run,
        model: GPRModel,
        cat: Catalogue,
        catalogue: LiveCatalogue,
        beam: int,
        score: ServeScore,
        guide: ValueGuide | None = None,
        static: bool | None = None,
    ) -> None:
        """`static`: decode in a snapshot of the catalogue as a `model.trie.Trie` on the model's
        device, remade after every update, with per-request masks (default: on a GPU, whose
        kernels should not call back into the CPU catalogue; on CPU the live trie is used)."""
        self.run, self.model, self.cat, self.catalogue = run, model.eval(), cat, catalogue
        self.beam, self.score, self.guide = beam, score, guide
        self.device = next(model.parameters()).device
        self.static = self.device.type != "cpu" if static is None else static
        self._snapshot: tuple[int, Trie] | None = None
        if guide is not None and model.hte is None:
            raise GprInputError(
                "the value-guided beam needs a run with HTE", file=run.path, field="serve.guide"
            )
        self.limits = {**LIMITS, "max_item_id": len(cat.sids.codes) - 1}
        self._lock = threading.Lock()  # one decode at a time (torch uses the cores itself)
        if score.log_hte_value and (model.hte is None or model.cfg.hte_side):
            raise GprInputError(
                "serving by HTE value needs HTE without side features (model.hte_features: [])",
                file=run.path,
                field="serve.score.log_hte_value",
            )

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        ads: str | Path | None = None,
        beam: int | None = None,
        day: int | None = None,
        overrides: list[str] | None = None,
        device: str = "cpu",
        static: bool | None = None,
    ) -> Engine:
        """Load RUN (no training data); `ads`: an items.parquet whose ads replace the run's own;
        `day`: the catalogue's day (default: the run's world's last day, its test day);
        `overrides`: `serve.field=value` items over the run's serve section; `device`: where the
        model runs (`auto`: CUDA when there is one); `static`: see `Engine`."""
        r = Run.load(run)
        model, cat = load_model(r, device)
        if not isinstance(model, GPRModel):
            raise GprInputError(
                f"serving needs a gpr or hstu run, not {r.model}", file=r.path, field="model"
            )
        table = cat.ads if ads is None else read_ad_table(Path(ads))
        if table is None:
            raise GprInputError(
                "the run holds no ads (not trained on an ad world); pass --ads ITEMS.parquet",
                file=r.catalogue,
                field="ads",
            )
        cfg = GprConfig.model_validate(r.info["config"])
        day = cfg.world.n_days - 1 if day is None else day
        live = LiveCatalogue.from_run(r, Ads.from_items(table), day=day)
        serve = serve_config(r.info["config"], overrides)
        beam = beam or serve.beam or cfg.train.beam
        return cls(r, model, cat, live, beam, serve.score, serve.guide, static)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "run": self.run.path.name,
            "model": self.run.model,
            "stage": self.run.info.get("stage", "mtp"),
            "levels": self.cat.sids.levels,
            "beam": self.beam,
            "guide": None if self.guide is None else self.guide.model_dump(),
            "catalogue_ads": len(self.catalogue),
            "catalogue_version": self.catalogue.version,
            "day": self.catalogue.day,
        }

    def snapshot(self) -> Trie:
        """The catalogue as a static trie on the model's device, remade when it has changed."""
        version = self.catalogue.version
        if self._snapshot is None or self._snapshot[0] != version:
            self._snapshot = (version, self.catalogue.to_trie().to(self.device))
        return self._snapshot[1]

    # --- requests -> tokens ---------------------------------------------------------------------
    def tokens(self, reqs: list[ServeRequest]) -> tuple[TokenStreams, np.ndarray]:
        """One token stream per request (U tokens, the journey's tail, the request's E token) and
        the position of each request's E token."""
        n_u, body = len(self.cat.user_fields), self.model.cfg.max_len - len(self.cat.user_fields)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "item", "field", "act", "ts")}
        lens = []
        for r in reqs:
            ev = r.journey[-(body - 1) :] if body > 1 else []
            u = [getattr(r.user, f) for f in self.cat.user_fields]
            t = [TYPE_CODE["U"]] * n_u + [TYPE_CODE[e.token_type] for e in ev] + [E]
            ids = [-1] * n_u + [e.item_id for e in ev] + [-1]
            env = [[e.scene, e.slot, e.device, e.hour] for e in ev]
            env.append([r.env.scene, r.env.slot, r.env.device, r.env.hour])
            ufield = [
                [USER_FIELDS.index(f), v, 0, 0]
                for f, v in zip(self.cat.user_fields, u, strict=True)
            ]
            parts["t"].append(np.asarray(t, dtype=np.int64))
            parts["item"].append(np.asarray(ids, dtype=np.int64))
            parts["field"].append(np.asarray(ufield + env, dtype=np.int64).reshape(-1, 4))
            act = [0] * n_u + [e.action for e in ev] + [0]
            parts["act"].append(np.asarray(act, dtype=np.int64))
            parts["ts"].append(np.asarray([0] * n_u + [e.timestamp for e in ev] + [r.timestamp]))
            lens.append(len(t))
        indptr = np.r_[0, np.cumsum(lens)]
        item = np.concatenate(parts["item"])
        codes = self.cat.sids.codes
        known = (item >= 0) & (item < len(codes))
        known[known] = (codes[item[known]] >= 0).all(1)
        ttype = np.concatenate(parts["t"])
        n = len(ttype)
        j = TokenStreams(
            indptr=indptr,
            users=np.arange(len(reqs)),
            ttype=ttype,
            item=np.where(known, item, -1),
            field=np.maximum(np.concatenate(parts["field"]), 0),
            action=np.maximum(np.concatenate(parts["act"]), 0),
            day=np.zeros(n, dtype=np.int64),
            split=np.zeros(n, dtype=np.int64),
            request=np.full(n, -1, dtype=np.int64),
            n_user_tokens=n_u,
            ts=np.concatenate(parts["ts"]).astype(np.int64),
        )
        return j, indptr[1:] - 1

    def batch(self, reqs: list[ServeRequest]) -> Batch:
        """The model batch of `reqs`: one prediction at each request's E token."""
        j, pos = self.tokens(reqs)
        only = np.zeros(len(j.ttype), dtype=bool)
        only[pos] = True
        max_len, heads = self.model.cfg.max_len, self.model.cfg.mtp_heads
        windows = tail_windows(j, pos, max_len)
        none = np.full((len(j.ttype), heads), -1, dtype=np.int64)
        b = collate(j, windows, self.cat.sids, none, only, (), max_len)
        k = self.model.cfg.thought_tokens
        if k > 0 and self.cat.item_topic is not None:
            t = window_thoughts(j, windows, self.cat.item_topic, k, self.cat.engaged_only)
            b.thought = torch.from_numpy(t)
        return b

    # --- decoding ---------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(self, reqs: list[ServeRequest]) -> list[Recommendation]:
        """Ranked ads for each request (up to its k), with their score terms and timings."""
        if not reqs:
            return []
        check_requests(reqs, self.limits, self.model.cfg.max_len - len(self.cat.user_fields) - 1)
        t0 = time.perf_counter()
        b = self.batch(reqs)
        t1 = time.perf_counter()
        live = self.catalogue
        seg = live.space.of(
            [r.user.age_band for r in reqs],
            [r.user.gender for r in reqs],
            [r.user.region for r in reqs],
        )
        with self._lock:
            b = b.to(self.device)
            enc = self.model.encode(b)
            if self.static:
                trie = self.snapshot()
                mask = live.mask_segments(seg).to(self.device)
                items, logp = self.model.generate(b, trie, self.beam, mask, None, self.guide, enc)
            else:
                counts = live.eligibility(seg)
                heads = self.model.item_head is not None  # the item head reads a mask too
                live_mask = live.mask_segments(seg) if heads else None
                trie_like: Any = live  # the live catalogue stands in for the trie
                items, logp = self.model.generate(
                    b, trie_like, self.beam, live_mask, counts, self.guide, enc
                )
            items, logp = items.cpu(), logp.cpu()
            t2 = time.perf_counter()
            bid = live.bids(items)
            pctr = pcvr = None
            if self.model.hte is not None and not self.model.cfg.hte_side:
                paths = live.paths[live.column(items).clamp(min=0)][..., : self.cat.sids.levels]
                probs = self.model.hte_probs(b, paths.to(self.device), h=enc[0])
                pctr, pcvr = probs[0].cpu(), probs[1].cpu()
            value = bid * pctr * pcvr if pctr is not None and pcvr is not None else None
            score = serving_score(self.score, items, logp, bid, value)
            order = score.argsort(dim=1, descending=True, stable=True)
        t3 = time.perf_counter()
        timings = {
            "featurise": 1000 * (t1 - t0),
            "decode": 1000 * (t2 - t1),
            "score": 1000 * (t3 - t2),
        }
        out = []
        for r, req in enumerate(reqs):
            ads: list[ServedAd] = []
            for c in order[r].tolist():
                it = int(items[r, c])
                if it < 0 or len(ads) >= req.k:
                    break
                ctr = None if pctr is None else float(pctr[r, c])
                cvr = None if pcvr is None else float(pcvr[r, c])
                bd = float(bid[r, c])
                ads.append(
                    ServedAd(
                        item_id=it,
                        score=float(score[r, c]),
                        logp=float(logp[r, c]),
                        pctr=ctr,
                        pcvr=cvr,
                        ecpm=None if ctr is None or cvr is None else 1000 * bd * ctr * cvr,
                        bid=bd,
                    )
                )
            out.append(Recommendation(ads, dict(timings)))
        return out


def check_requests(
    reqs: list[ServeRequest], limits: dict[str, int], window: int | None = None
) -> None:
    """Every field within what the model embeds; one GprInputError naming the first bad one.
    `window`: only the journey's last `window` events are read (the model's), so only they are
    checked (the HTTP schema has checked every event's types and ranges already)."""
    for i, r in enumerate(reqs):
        where = f"requests[{i}]"
        for f, key in USER_LIMIT.items():
            _in_range(getattr(r.user, f), limits[key], f"{where}.user.{f}")
        for f, key in ENV_LIMIT.items():
            _in_range(getattr(r.env, f), limits[key], f"{where}.env.{f}")
        if r.k < 1:
            raise GprInputError("k must be >= 1", field=f"{where}.k")
        last = -(2**62)
        first = 0 if window is None else max(len(r.journey) - window, 0)
        for e_i in range(first, len(r.journey)):
            e = r.journey[e_i]
            at = f"{where}.journey[{e_i}]"
            if e.token_type not in ("O", "E", "I"):
                raise GprInputError("token_type must be O, E or I", field=f"{at}.token_type")
            if e.timestamp < last:
                raise GprInputError("events must be in time order", field=f"{at}.timestamp")
            last = e.timestamp
            if e.token_type in ("O", "I") and e.item_id < 0:
                raise GprInputError("an O or I event needs an item_id >= 0", field=f"{at}.item_id")
            if e.token_type == "I":
                _in_range(e.action, limits["actions"], f"{at}.action")
            if e.token_type == "E":
                for f, key in ENV_LIMIT.items():
                    _in_range(getattr(e, f), limits[key], f"{at}.{f}")
        if r.timestamp < last:
            raise GprInputError("the request is older than its journey", field=f"{where}.timestamp")


def _in_range(v: int, size: int, name: str) -> None:
    if not 0 <= v < size:
        raise GprInputError(f"must be in 0..{size - 1}, got {v}", field=name)


def logged_requests(logs: LogData, request_ids: np.ndarray, k: int = 10) -> list[ServeRequest]:
    """Logged requests as a client would send them: the user's attributes, every event before
    the request (oldest first) and the request's environment (load tests, equivalence tests)."""
    j, users = logs.journeys, logs.users
    pos = j.positions(np.asarray(request_ids, dtype=np.int64))
    types = {code: t for t, code in TYPE_CODE.items()}
    out = []
    for p in pos.tolist():
        rows = range(int(j.user_start[p]), p)
        u = int(j.user[p])
        journey = [
            Event(
                token_type=types[int(j.ttype[q])],
                timestamp=int(j.ts[q]),
                item_id=int(j.item[q]),
                scene=int(j.scene[q]),
                slot=int(j.slot[q]),
                device=int(j.device[q]),
                hour=int(j.hour[q]),
                action=int(j.action[q]),
            )
            for q in rows
            if int(j.ttype[q]) != TYPE_CODE["U"]
        ]
        user = UserFeatures(*(int(getattr(users, f)[u]) for f in USER_FIELDS))
        env = Env(int(j.scene[p]), int(j.slot[p]), int(j.device[p]), int(j.hour[p]))
        out.append(ServeRequest(user, journey, env, int(j.ts[p]), k))
    return out
