"""A trained generative run (GPR, HSTU, TIGER, SASRec) as a policy of the true-world replay.

For each request the model reads the journey up to (and including) the request's E token, then
decodes inside the trie of the ads eligible for that request; every generated ad exists and may be
shown. The union of the MTP heads' beams is ranked by the run's `serve.score`, a weighted sum of
log p(ad), log bid and log(bid x HTE pCTR x HTE pCVR) (the last alone is the model's own auction,
spec §5); the default is the model's order as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpr.core.config import ServeScore, serve_config
from gpr.core.errors import GprInputError
from gpr.market.policy import Ranked, RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.journey import Batch
from gpr.model.registry import load_run
from gpr.policy.hte_features import ItemTopics, ad_bids, hte_side_features


class GenerativePolicy:
    def __init__(
        self,
        run_dir: Path,
        data_dir: Path,
        beam: int | None = None,
        overrides: list[str] | None = None,
    ) -> None:
        """`overrides`: `serve.field=value` items over the run's serve section."""
        self.model, self.prep, info = load_run(run_dir, data_dir)
        self.model.eval()
        serve = serve_config(info["config"], overrides)
        self.score = serve.score
        if self.score.log_hte_value and not (
            isinstance(self.model, GPRModel) and self.model.hte is not None
        ):
            raise GprInputError(
                "ranking by HTE value needs a run with HTE",
                file=run_dir,
                field="serve.score.log_hte_value",
            )
        self.guide = serve.guide
        if self.guide is not None and not (
            isinstance(self.model, GPRModel) and self.model.hte is not None
        ):
            raise GprInputError(
                "the value-guided beam needs a run with HTE", file=run_dir, field="serve.guide"
            )
        terms = {k: w for k, w in self.score.model_dump().items() if w}
        suffix = (
            "" if terms == {"logp": 1.0} else "+" + "+".join(f"{k}{w:g}" for k, w in terms.items())
        )
        if self.guide is not None:
            suffix += f"+guide{self.guide.weight:g}/{self.guide.prune:g}"
        self.name = f"{info['model']}:{Path(run_dir).name}{suffix}"
        self.beam = beam or serve.beam or int(info["config"]["train"]["beam"])
        self.topics = (
            ItemTopics.load(data_dir) if getattr(self.model.cfg, "hte_session", 0) else None
        )

    @torch.no_grad()
    def rank(self, batch: RequestBatch) -> Ranked:
        prep, max_len = self.prep, self.model.cfg.max_len
        b = prep.at_batch(batch, max_len, getattr(self.model.cfg, "thought_tokens", 0))
        elig = prep.trie_eligible(batch)
        h = None
        if isinstance(self.model, GPRModel):
            enc = self.model.encode(b)  # once: the beam and HTE's value both read it
            h = enc[0]
            items, logp = self.model.generate(
                b, prep.trie, self.beam, elig, guide=self.guide, encoded=enc
            )
        else:
            items, logp = self.model.generate(b, prep.trie, self.beam, elig)
        items, scores = self._ranked(b, items, logp, batch, h)
        m = min(batch.m, items.shape[1])
        ads = items[:, :m].numpy()
        values = np.where(ads >= 0, scores[:, :m].numpy(), np.nan)
        return Ranked(ads, values)

    def _hte_value(
        self, b: Batch, items: torch.Tensor, batch: RequestBatch, h: torch.Tensor | None = None
    ) -> torch.Tensor:
        """bid x HTE pCTR x HTE pCVR (expected revenue) of each candidate, 0 for -1."""
        assert isinstance(self.model, GPRModel)
        codes = torch.from_numpy(self.prep.sids.codes[items.clamp(min=0).numpy()])
        side = None
        if self.model.cfg.hte_side:
            side = hte_side_features(b, items, batch.ads, batch.days, self.topics)
        ctr, cvr = self.model.hte_probs(b, codes, side, h)
        return torch.where(items >= 0, ad_bids(items, batch.ads) * ctr * cvr, 0.0)

    def _ranked(
        self,
        b: Batch,
        items: torch.Tensor,
        logp: torch.Tensor,
        batch: RequestBatch,
        h: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates in order of the serving score (-1 items last), with their scores."""
        value = self._hte_value(b, items, batch, h) if self.score.log_hte_value else None
        total = serving_score(self.score, items, logp, ad_bids(items, batch.ads), value)
        order = total.argsort(dim=1, descending=True, stable=True)
        return items.gather(1, order), total.gather(1, order)


def serving_score(
    w: ServeScore,
    items: torch.Tensor,
    logp: torch.Tensor,
    bid: torch.Tensor,
    value: torch.Tensor | None = None,
) -> torch.Tensor:
    """(P, N) serving score of candidates: w.logp·log p + w.log_bid·log bid + w.log_hte_value·log
    value (value: bid x pCTR x pCVR, needed when that weight is set); -inf for -1 items. The
    default weights give log p itself, so the beam's own order is kept."""
    if w.logp == 1.0 and not w.log_bid and not w.log_hte_value:
        return logp
    total = w.logp * logp if w.logp else torch.zeros_like(logp)
    if w.log_hte_value:
        assert value is not None, "log_hte_value needs the candidates' HTE value"
        total = total + w.log_hte_value * value.clamp(min=1e-12).log()
    if w.log_bid:
        total = total + w.log_bid * bid.clamp(min=1e-12).log()
    return torch.where(items >= 0, total, -torch.inf)
