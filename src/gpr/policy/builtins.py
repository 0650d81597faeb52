"""The built-in policies, and `load_policy`, which builds any policy from its spec.

Built-ins: `RandomEligible` (a uniformly random order of the eligible ads), `Logging` (what the logs
showed for that request, if still eligible), `Oracle` (ranks by true revenue: it knows the truth and
bounds every policy). The cascade (`gpr.policy.cascade`) and generative runs
(`gpr.policy.generative`) load from their run directories: run.json's `model` field names the
factory; `register_policy` adds new ones without touching this file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpr.core.errors import GprInputError
from gpr.core.io import read_json
from gpr.market.policy import Policy, Ranked, RequestBatch, top_m

if TYPE_CHECKING:
    from gpr.world.truth import Truth
BUILTINS = ("random-eligible", "logging", "oracle")


class RandomEligible:
    """A uniformly random order of the eligible ads (values are 0)."""

    def __init__(self, seed: int = 0) -> None:
        self.name = "random-eligible"
        self.rng = np.random.default_rng(seed)

    def rank(self, batch: RequestBatch) -> Ranked:
        r = top_m(self.rng.random(batch.eligible.shape), batch.eligible, batch.ads, batch.m)
        r.values = np.where(r.ads >= 0, 0.0, np.nan)
        return r


class Logging:
    """The logged policy: the ad the logs showed for this request, if it is still eligible (budgets
    in the replay are tracked with expected spend, so a logged ad can run out); else nothing."""

    def __init__(self) -> None:
        self.name = "logging"

    def rank(self, batch: RequestBatch) -> Ranked:
        b = len(batch)
        row = batch.journeys.shown(batch.request_ids)
        item = np.where(row >= 0, batch.journeys.item[np.maximum(row, 0)], -1)
        a = batch.ads.index_of(item)
        ok = (a >= 0) & batch.eligible[np.arange(b), np.maximum(a, 0)]
        ads = np.full((b, batch.m), -1, dtype=np.int64)
        val = np.full((b, batch.m), np.nan)
        ads[:, 0] = np.where(ok, item, -1)
        val[:, 0] = np.where(ok, 0.0, np.nan)
        return Ranked(ads, val)


class Oracle:
    """Ranks the eligible ads by their true expected revenue bid x pCTR x pCVR (an upper bound)."""

    def __init__(self, truth: Truth) -> None:
        self.name = "oracle"
        self.truth = truth

    def true_values(self, batch: RequestBatch) -> np.ndarray:
        """(B, A) true revenue of every ad for every request of the batch."""
        from gpr.world.response import ctr_logit, cvr_logit, session_latent, sigmoid
        from gpr.world.truth import Truth

        t = self.truth
        if not isinstance(t, Truth):  # any object with Truth's value(request_ids, ad_item_ids)
            grid = np.broadcast_to(batch.ads.item_id, batch.eligible.shape)
            return np.asarray(t.value(batch.request_ids, grid), dtype=np.float64)
        a_ids = batch.ads.item_id - t.n_organic
        if a_ids.min() < 0 or a_ids.max() >= len(t.bid):
            raise GprInputError("the truth does not match this dataset's ads", field="item_id")
        r = t._request_index(batch.request_ids)
        users = t.req_user[r]
        u = t.long_term(users, t.req_day[r])
        z = session_latent(t.sub_centroid, t.req_topic[r], t.offset[users])
        v = t.item_latent[batch.ads.item_id]
        a_long, a_sess = u @ v.T, z @ v.T
        col = (t.req_slot[r][:, None], t.req_scene[r][:, None], t.req_device[r][:, None])
        ctr = sigmoid(ctr_logit(t.cfg, a_sess, a_long, t.quality[a_ids][None, :], *col))
        cvr = sigmoid(
            cvr_logit(
                t.cfg,
                a_long,
                t.sensitivity[users][:, None],
                t.log_price[a_ids][None, :],
                t.q_conv[a_ids][None, :],
            )
        )
        return np.asarray(t.bid[a_ids][None, :] * ctr * cvr)

    def rank(self, batch: RequestBatch) -> Ranked:
        return top_m(self.true_values(batch), batch.eligible, batch.ads, batch.m)


# (run_dir, data_dir, serve overrides `serve.field=value`) -> Policy
PolicyFactory = Callable[[Path, Path, list[str]], Policy]
_FACTORIES: dict[str, PolicyFactory] = {}


def register_policy(model: str, factory: PolicyFactory) -> None:
    """Make run directories whose run.json says `model: <model>` loadable by `load_policy`."""
    _FACTORIES[model] = factory


def _cascade(run_dir: Path, data_dir: Path, overrides: list[str]) -> Policy:
    from gpr.policy.cascade import CascadePolicy

    if overrides:
        raise GprInputError("serve overrides apply to generative runs only", field=overrides[0])
    return CascadePolicy(run_dir, data_dir)


register_policy("cascade", _cascade)


def _generative(run_dir: Path, data_dir: Path, overrides: list[str]) -> Policy:
    from gpr.policy.generative import GenerativePolicy

    return GenerativePolicy(run_dir, data_dir, overrides=overrides)


for _model in ("gpr", "hstu", "tiger", "sasrec"):
    register_policy(_model, _generative)


def load_policy(
    spec: str | Path, data_dir: str | Path, seed: int = 0, overrides: list[str] | None = None
) -> Policy:
    """A SPEC: 'random-eligible', 'logging', 'oracle', or a run directory holding run.json.

    `overrides` (`serve.field=value`) change how a generative run is served.
    """
    data_dir = Path(data_dir)
    s = str(spec)
    if overrides and s in BUILTINS:
        raise GprInputError(f"serve overrides do not apply to '{s}'", field=overrides[0])
    if s == "random-eligible":
        return RandomEligible(seed)
    if s == "logging":
        return Logging()
    if s == "oracle":
        from gpr.world.truth import Truth

        return Oracle(Truth.load(data_dir))
    run = Path(spec)
    if not run.is_dir():
        raise GprInputError(
            f"unknown policy '{s}': not one of {', '.join(BUILTINS)} nor a run directory",
            field="policy",
        )
    meta: dict[str, Any] = read_json(run / "run.json")
    model = meta.get("model")
    if model not in _FACTORIES:
        raise GprInputError(
            f"unknown model {model!r} (known: {', '.join(sorted(_FACTORIES))})",
            file=run / "run.json",
            field="model",
        )
    return _FACTORIES[str(model)](run, data_dir, list(overrides or []))
