"""Distil the simulator into HTE: GPR's own value heads learn the copied ranking models' scores.

HTE's pCTR / pCVR heads (spec §3.3) are refitted, with everything else frozen, to the
simulator's pCTR / pCVR (soft BCE targets) of the ads GPR itself proposes: the union of the MTP
heads' beams on sampled train requests. Afterwards GPR ranks its union alone by
log p + `serve.score.log_hte_value` · log(bid × HTE pCTR × HTE pCVR) — the product of the
imitation prior and the learned value that `experiments/business/bid_serving.py --judge
simulator` serves with the simulator itself (docs/results/log/stages_analysis.md §7).

    gpr train --stage hte --init VAFT --simulator CASCADE_RUN --out RUN_HTE

With `--set model.hte_features=[side]` HTE also gets its wide part on the candidates' side features
(price, bid, age, the user's logged price level: model/hte.py), which the semantic ID does not
carry and the simulator reads; it starts at 0 and is fitted with the heads.

Held-out valid requests pick the best epoch: the share of candidate pairs (same request) that
HTE's value orders as the simulator's does (`pair_agreement`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gpr.cascade.simulator import Simulator
from gpr.core.config import GprConfig
from gpr.core.errors import GprInputError
from gpr.core.io import atomic_dir
from gpr.core.run import copy_catalogue, seal
from gpr.core.runtime import set_threads
from gpr.market.policy import RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.hte import side_width
from gpr.model.journey import positions_for_split
from gpr.model.prepare import Prepared
from gpr.model.registry import load_run
from gpr.policy.hte_features import ItemTopics, ad_bids, hte_side_features
from gpr.policy.rollout import servable

CHUNK = 256  # requests per generation batch


def pair_agreement(pred: torch.Tensor, target: torch.Tensor, ok: torch.Tensor) -> float:
    """Share of within-row candidate pairs of different target that `pred` orders the same way."""
    dp = pred[:, :, None] - pred[:, None, :]
    dt = target[:, :, None] - target[:, None, :]
    pair = ok[:, :, None] & ok[:, None, :] & (dt != 0)
    agree = ((dp * dt) > 0) & pair
    return float(agree.sum()) / max(int(pair.sum()), 1)


class Candidates:
    """Frozen inputs and simulator targets of HTE for the beam unions of a set of requests."""

    def __init__(
        self, model: GPRModel, prep: Prepared, sim: Simulator, pos: np.ndarray, beam: int
    ) -> None:
        cfg, trie, logs = model.cfg, prep.trie, sim.logs
        with_side = model.hte is not None and model.hte.side > 0
        topics = ItemTopics.from_items(sim.logs.items) if cfg.hte_session else None
        keys = ("h", "pre", "ok", "bid", "ctr", "cvr", "side")
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for lo in range(0, len(pos), CHUNK):
            ids = prep.journeys.request[pos[lo : lo + CHUNK]]
            req = servable(RequestBatch.of(ids, logs.journeys, logs.ads, logs.users))
            if not len(req):
                continue
            b = prep.at_batch(req, cfg.max_len, cfg.thought_tokens)
            with torch.no_grad():
                items, _ = model.generate(b, trie, beam, prep.trie_eligible(req))
                h, _, _ = model.encode(b)
                codes = torch.from_numpy(prep.sids.codes[items.clamp(min=0).numpy()])
                pre = model.embed.prefix(codes.reshape(-1, codes.shape[-1]))
            s = sim.score(req.request_ids, items.clamp(min=0).numpy())
            parts["h"].append(h)
            parts["pre"].append(pre.reshape(*items.shape, *pre.shape[1:]))
            parts["ok"].append((items >= 0).to(torch.uint8))
            parts["bid"].append(ad_bids(items, logs.ads))
            if with_side:
                parts["side"].append(hte_side_features(b, items, logs.ads, req.days, topics))
            parts["ctr"].append(torch.from_numpy(s.pctr).float())
            parts["cvr"].append(torch.from_numpy(s.pcvr).float())
        if not parts["h"]:
            raise GprInputError("no request with an eligible ad", field="split")
        width = max(t.shape[1] for t in parts["ok"])

        def cat(key: str) -> torch.Tensor:
            ts = parts[key]
            if key == "h":
                return torch.cat(ts)
            pads = [(0, 0) * (t.dim() - 2) + (0, width - t.shape[1]) for t in ts]
            return torch.cat([F.pad(t, pad) for t, pad in zip(ts, pads, strict=True)])

        self.h, self.pre, self.ok = cat("h"), cat("pre"), cat("ok").bool()
        self.bid, self.ctr, self.cvr = cat("bid"), cat("ctr"), cat("cvr")
        self.side = cat("side") if with_side else None

    def __len__(self) -> int:
        return len(self.h)

    def logits(self, model: GPRModel, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HTE's ctr / cvr logits (R, N) for the candidates of `rows`."""
        assert model.hte is not None
        h, pre = self.h[rows], self.pre[rows]
        r, n = pre.shape[:2]
        side = self.side[rows].reshape(r * n, -1) if self.side is not None else None
        v = model.hte(h.repeat_interleave(n, dim=0), pre.reshape(r * n, *pre.shape[2:]), side)
        return v["ctr"].reshape(r, n), v["cvr"].reshape(r, n)

    def loss(self, model: GPRModel, rows: torch.Tensor) -> torch.Tensor:
        c, v = self.logits(model, rows)
        ok = self.ok[rows]
        bce = F.binary_cross_entropy_with_logits(c, self.ctr[rows], reduction="none")
        bce = bce + F.binary_cross_entropy_with_logits(v, self.cvr[rows], reduction="none")
        return (bce * ok).sum() / ok.sum().clamp(min=1)

    @torch.no_grad()
    def agreement(self, model: GPRModel) -> float:
        """pair_agreement of HTE's value bid × pCTR × pCVR with the simulator's (in logs)."""
        rows = torch.arange(len(self))
        c, v = self.logits(model, rows)
        log_bid = self.bid.clamp(min=1e-12).log()
        pred = log_bid + F.logsigmoid(c) + F.logsigmoid(v)
        target = log_bid + (self.ctr.clamp(min=1e-12) * self.cvr.clamp(min=1e-12)).log()
        return pair_agreement(pred, target, self.ok)


def distill_hte(
    init: str | Path, simulator: str | Path, cfg: GprConfig, out: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Refit HTE's pCTR / pCVR heads of run `init` to the simulator; a new run in `out`."""
    t0 = time.perf_counter()
    set_threads(cfg.runtime.threads)
    torch.manual_seed(cfg.seed)
    model, prep, info = load_run(init)
    if not isinstance(model, GPRModel) or model.hte is None:
        raise GprInputError("needs a gpr/hstu run with HTE (model.hte)", file=init, field="hte")
    ac = cfg.align
    sim = Simulator(simulator, info["data"])
    rng = np.random.default_rng(cfg.seed)
    j, beam = prep.journeys, int(info["config"]["train"]["beam"])
    beam = cfg.serve.beam or beam

    def pick(split: str, n: int) -> np.ndarray:
        p = positions_for_split(j, prep.pred_mask, split)
        return np.sort(rng.choice(p, min(n, len(p)), replace=False))

    want = list(cfg.model.hte_features)
    if cfg.model.hte_side and not model.cfg.hte_side:
        model.hte.add_side(side_width(True, cfg.model.hte_session))
        model.cfg = model.cfg.model_copy(update={"hte_features": want})
    elif cfg.model.hte_session and not model.cfg.hte_session:
        raise GprInputError(
            "the init run's HTE already has side features without the session ones",
            file=init,
            field="model.hte_features",
        )
    model.eval().requires_grad_(False)
    train_c = Candidates(model, prep, sim, pick("train", ac.hte_requests), beam)
    valid_c = Candidates(model, prep, sim, pick("valid", ac.eval_requests), beam)
    heads = [*model.hte.ctr.parameters(), *model.hte.cvr.parameters()]
    if model.hte.side:
        heads += [*model.hte.side_ctr.parameters(), *model.hte.side_cvr.parameters()]
    for p in heads:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(heads, lr=ac.hte_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = {"agreement": valid_c.agreement(model), "epoch": 0}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    log: list[dict[str, Any]] = [{"epoch": 0, "valid_agreement": best["agreement"]}]
    for ep in range(1, ac.hte_epochs + 1):
        order = torch.randperm(len(train_c), generator=gen)
        losses = []
        for lo in range(0, len(order), 64):
            loss = train_c.loss(model, order[lo : lo + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            val_loss = valid_c.loss(model, torch.arange(len(valid_c))).item()
        agree = valid_c.agreement(model)
        log.append(
            {
                "epoch": ep,
                "loss": float(np.mean(losses)),
                "valid_loss": val_loss,
                "valid_agreement": agree,
            }
        )
        if progress:
            print(
                f"hte epoch {ep}: loss {np.mean(losses):.4f} valid agreement {agree:.4f}",
                flush=True,
            )
        if agree > best["agreement"]:
            best = {"agreement": agree, "epoch": ep}
            state = {k: v.clone() for k, v in model.state_dict().items()}
    with atomic_dir(out) as tmp:
        copy_catalogue(init, tmp)
        save_file(
            {k: v.contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors")
        )
        with open(tmp / "metrics.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in log)
        config = {**info["config"], "align": ac.model_dump(mode="json"), "seed": cfg.seed}
        kept = {"hte_features": list(model.cfg.hte_features)}
        config["model"] = {**config["model"], **kept}
        info = {k: v for k, v in info.items() if k not in ("epochs_run", "train_windows")}
        info.update(
            model_config={**info["model_config"], **kept},
            config=GprConfig.model_validate(config).model_dump(mode="json"),
            stage="hte",
            init=str(init),
            simulator=str(simulator),
            best=best,
            train_requests=len(train_c),
            seconds=round(time.perf_counter() - t0, 1),
        )
        info = seal(tmp, info)
    return info
