"""The alignment loop shared by DPO and HEPO (spec §4.3-4.4), with ARR mixed into HEPO batches.

    gpr train --stage dpo  --init RUN --simulator CASCADE_RUN --out RUN_DPO
    gpr train --stage hepo --init RUN --simulator CASCADE_RUN --out RUN_HEPO [--arr]
        [--reference RUN_REF]

Each step draws `requests_per_step` train requests (a share `arr_share` of them synthetic with
--arr), samples K candidates per request inside its eligible-ad trie, scores them with the
simulator and takes one policy update (DPO) or `ppo_epochs` of them (HEPO). Dropout is off
throughout, so sampling and updating see the same policy. Every `eval_every` steps: the mean
simulator value of the policy's top ad on held-out valid requests (or, with `select=objective`,
the KL-regularised objective); the best checkpoint is kept. The KL (and `candidate_pool`) refer to
the reference model: the init run unless --reference names another run on the same data and SIDs.
The run directory is like an MTP run's (a policy for `gpr simulate`), with metrics.jsonl per step.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from gpr.cascade.simulator import Simulator
from gpr.core.config import AlignConfig, GprConfig, ModelConfig
from gpr.core.errors import GprInputError
from gpr.core.io import atomic_dir, read_json
from gpr.core.run import copy_catalogue, seal
from gpr.core.runtime import set_threads
from gpr.market.policy import RequestBatch
from gpr.model.gpr import GPRModel
from gpr.model.journey import Batch, positions_for_split
from gpr.model.prepare import Prepared
from gpr.model.registry import build_model, load_run, load_weights
from gpr.model.trie import Trie
from gpr.policy.rollout import Rollout, level_dists, level_kl, sample, servable, taken
from gpr.train.arr import synthetic_requests
from gpr.train.dpo import dpo_loss, log_value, preference_pairs, soft_labels
from gpr.train.hepo import (
    gae,
    leaf_center,
    leaf_zscore,
    positive_history,
    ppo_loss,
    process_rewards,
    value_loss,
)

STAGES = ("dpo", "hepo")


class Aligner:
    """State of one alignment run: policy, frozen reference, simulator, request pools."""

    def __init__(
        self,
        init: Path,
        simulator: Path,
        cfg: GprConfig,
        stage: str,
        arr: bool = False,
        reference: Path | None = None,
    ) -> None:
        if stage not in STAGES:
            raise GprInputError(f"unknown stage '{stage}' (choose from {STAGES})", field="stage")
        model, prep, info = load_run(init)
        if not isinstance(model, GPRModel):
            raise GprInputError(f"{stage} needs a gpr/hstu run", file=init, field="model")
        if stage == "hepo" and model.hte is None:
            raise GprInputError("HEPO needs HTE as its critic (model.hte)", file=init, field="hte")
        self.model, self.prep, self.info = model.eval(), prep, info
        self.stage, self.arr, self.ac = stage, arr, cfg.align
        if self.ac.select == "objective" and (stage != "hepo" or self.ac.reward == "value"):
            raise GprInputError(
                "select=objective needs --stage hepo with a log reward (align.reward)",
                field="align.select",
            )
        ref = copy.deepcopy(model) if reference is None else load_reference(reference, info, prep)
        self.ref = ref.eval().requires_grad_(False)
        self.sim = Simulator(simulator, info["data"])
        self.trie: Trie = prep.trie
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.val_gen = torch.Generator().manual_seed(cfg.seed + 1)  # validation samples only
        j = prep.journeys
        self.train_pos = positions_for_split(j, prep.pred_mask, "train")
        if self.ac.recent_days is not None:
            last = int(j.day[self.train_pos].max())
            self.train_pos = self.train_pos[j.day[self.train_pos] > last - self.ac.recent_days]
        valid = positions_for_split(j, prep.pred_mask, "valid")
        n_val = min(self.ac.eval_requests, len(valid))
        self.valid = self.requests(np.sort(self.rng.choice(valid, n_val, replace=False)))
        if not len(self.train_pos) or not n_val:
            raise GprInputError("no train or valid requests to align on", field="split")
        self.opt = torch.optim.AdamW(model.parameters(), lr=self.ac.lr, weight_decay=0.0)
        self.reward_scale: float | None = None
        self._anchors: RequestBatch | None = None  # ARR's pool of real requests
        n_lv = prep.sids.levels
        if len(self.ac.process_alpha) != n_lv:
            raise GprInputError(
                f"needs {n_lv} values (one per semantic level)", field="align.process_alpha"
            )
        coef = self.ac.level_coef or [1.0] * self.trie.depth
        if len(coef) != self.trie.depth:
            raise GprInputError(f"needs {self.trie.depth} values", field="align.level_coef")
        self.coef = torch.tensor(coef)

    # --- requests ------------------------------------------------------------------------------
    def requests(self, pos: np.ndarray, eligibility: bool = True) -> RequestBatch:
        """The logged requests at E-token positions `pos` of the model's journeys."""
        logs = self.sim.logs
        ids = self.prep.journeys.request[pos]
        return RequestBatch.of(ids, logs.journeys, logs.ads, logs.users, eligibility=eligibility)

    def draw(self) -> RequestBatch:
        ac = self.ac
        n_syn = round(ac.requests_per_step * ac.arr_share) if self.arr else 0
        real = self.requests(self.rng.choice(self.train_pos, ac.requests_per_step - n_syn))
        if not n_syn:
            return real
        if self._anchors is None:
            self._anchors = self.requests(self.train_pos, eligibility=False)
        syn = synthetic_requests(self._anchors, ac.arr_per_tier, ac.arr_recent, self.rng)
        pick = self.rng.choice(len(syn), min(n_syn, len(syn)), replace=False)
        syn = syn.take(pick)
        logs = self.sim.logs
        fresh = RequestBatch.of(syn.request_ids, logs.journeys, logs.ads, logs.users)
        return RequestBatch.concat([real, fresh.with_env(syn.env)])

    def _prepare(
        self, req: RequestBatch, pool: int | None = None
    ) -> tuple[RequestBatch, Batch, list[torch.Tensor]]:
        """Drop requests with no eligible ad; batch them; the trie counts of what may be sampled
        (with `pool`: only the reference model's top-`pool` beam ads of each request)."""
        cfg = self.model.cfg
        req = servable(req)
        b = self.prep.at_batch(req, cfg.max_len, cfg.thought_tokens)
        elig = self.prep.trie_eligible(req)
        if pool is not None:
            with torch.no_grad():
                items, _ = self.ref.generate(b, self.trie, pool, elig)
            col = self.trie.column(items)
            mask = torch.zeros_like(elig)
            rows = torch.arange(len(items)).unsqueeze(1).expand_as(col)
            ok = items >= 0
            mask[rows[ok], col[ok]] = True
            elig = elig & mask
        return req, b, self.trie.eligible_counts(elig)

    def rewards(self, req: RequestBatch, roll: Rollout) -> np.ndarray:
        r = roll.req.numpy()
        s = self.sim.score(req.request_ids[r], roll.item.numpy()[:, None], req.env[r])
        return s.value[:, 0]

    # --- one step ------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        req, b, counts = self._prepare(self.draw(), self.ac.candidate_pool)
        roll = sample(
            self.model, b, self.trie, counts, self.ac.candidates, self.ac.temperature, self.gen
        )
        value = self.rewards(req, roll)
        row = {"reward": float(value.mean()), "reward_max": float(value.max())}
        if self.stage == "dpo":
            row.update(self._dpo(b, counts, roll, value))
        else:
            row.update(self._hepo(b, counts, roll, value))
        return row

    def _update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()

    def _dpo(
        self, b: Batch, counts: list[torch.Tensor], roll: Rollout, value: np.ndarray
    ) -> dict[str, float]:
        group = roll.req.numpy() * self.model.cfg.mtp_heads + roll.head.numpy()
        w, lo = preference_pairs(value, group)
        if not len(w):
            return {"pairs": 0.0}
        idx = torch.from_numpy(np.r_[w, lo])
        sub = Rollout(roll.req[idx], roll.head[idx], roll.codes[idx], roll.item[idx])
        with torch.no_grad():
            ref = taken(level_dists(self.ref, b, self.trie, counts, sub)[0], sub.codes).sum(1)
        pi = taken(level_dists(self.model, b, self.trie, counts, sub)[0], sub.codes).sum(1)
        n = len(w)
        p = None
        if self.ac.dpo_labels == "soft":
            p = torch.from_numpy(soft_labels(value[w], value[lo])).to(pi.dtype)
        loss, acc = dpo_loss(pi[:n], pi[n:], ref[:n], ref[n:], self.ac.dpo_beta, p)
        self._update(loss)
        return {"loss": loss.item(), "pref_acc": acc.item(), "pairs": float(n)}

    def _hepo(
        self, b: Batch, counts: list[torch.Tensor], roll: Rollout, value: np.ndarray
    ) -> dict[str, float]:
        ac, model = self.ac, self.model
        assert model.hte is not None
        n_lv = self.prep.sids.levels
        big_r = self.terminal_reward(value)
        with torch.no_grad():
            lps, legal, h = level_dists(model, b, self.trie, counts, roll)
            old = taken(lps, roll.codes)
            ref = level_dists(self.ref, b, self.trie, counts, roll)[0] if ac.kl_weight > 0 else None
            hist, positive = positive_history(b, roll.req)
            proc = process_rewards(hist, positive, roll.codes, legal[:n_lv], ac.process_alpha)
            rewards = torch.cat([proc, big_r[:, None]], 1)
            v = model.hte.critic_values(h, model.embed.prefix(roll.codes[:, :n_lv]))
            adv, ret = gae(rewards, v, ac.gamma, ac.gae_lambda)
            leaf = leaf_zscore if ac.leaf_advantage == "zscore" else leaf_center
            adv[:, -1] = leaf(big_r, roll.req)
        out: dict[str, float] = {
            "process_reward": float(proc.sum(1).mean()),
            **{f"adv_l{lv}_mean": float(adv[:, lv].mean()) for lv in range(adv.shape[1])},
            **{f"adv_l{lv}_std": float(adv[:, lv].std()) for lv in range(adv.shape[1])},
        }
        for _ in range(ac.ppo_epochs):
            lps, _, h = level_dists(model, b, self.trie, counts, roll)
            pl, frac = ppo_loss(taken(lps, roll.codes), old, adv, ac.clip, self.coef)
            vl = value_loss(
                model.hte.critic_values(h, model.embed.prefix(roll.codes[:, :n_lv])), ret
            )
            kl = level_kl(lps, ref).sum(1).mean() if ref is not None else torch.zeros(())
            loss = pl + ac.value_weight * vl + ac.kl_weight * kl
            self._update(loss)
        out.update(loss=loss.item(), policy_loss=pl.item(), value_loss=vl.item(), kl=kl.item())
        out["clip_frac"] = float(frac)
        return out

    def terminal_reward(self, value: np.ndarray) -> torch.Tensor:
        """R of each rollout: final_value / its running mean (EMA 0.9), or with `reward=log_value`
        log final_value minus its running mean; either way the critic's targets stay O(1)."""
        kind = self.ac.reward
        r = np.asarray(value, np.float64) if kind == "value" else log_value(value)
        mean = float(r.mean())
        ema = self.reward_scale
        self.reward_scale = mean if ema is None else 0.9 * ema + 0.1 * mean
        if kind != "value":
            return torch.from_numpy(r - self.reward_scale).float()
        return torch.from_numpy(r).float() / max(self.reward_scale, 1e-12)

    # --- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate_objective(self) -> float:
        """E[R] - kl_weight · KL(π || π_ref) on the valid requests, R the log reward, estimated over
        K sampled candidates per request (the same pool and temperature as training)."""
        ac = self.ac
        req, b, counts = self._prepare(self.valid, ac.candidate_pool)
        roll = sample(self.model, b, self.trie, counts, ac.candidates, ac.temperature, self.val_gen)
        r = log_value(self.rewards(req, roll))
        lps = level_dists(self.model, b, self.trie, counts, roll)[0]
        ref = level_dists(self.ref, b, self.trie, counts, roll)[0]
        kl = level_kl(lps, ref).sum(1)
        return float(r.mean()) - ac.kl_weight * float(kl.mean())

    @torch.no_grad()
    def validate(self, beam: int = 20) -> float:
        """Mean simulator value of the policy's top-ranked eligible ad on the valid requests."""
        cfg = self.model.cfg
        req = servable(self.valid)
        b = self.prep.at_batch(req, cfg.max_len, cfg.thought_tokens)
        items, _ = self.model.generate(b, self.trie, beam, self.prep.trie_eligible(req))
        top = items[:, :1].numpy()
        s = self.sim.score(req.request_ids, top)
        return float(np.where(top >= 0, s.value, 0.0).mean())


def load_reference(run: Path, info: dict[str, Any], prep: Prepared) -> GPRModel:
    """The reference policy from another run on the init's data and SIDs (so `prep` fits it)."""
    ref_info = read_json(run / "run.json")
    for key in ("data", "sids", "model", "model_config"):
        if ref_info.get(key) != info.get(key):
            raise GprInputError(
                f"the reference run's {key} differs from the init run's", file=run, field=key
            )
    mcfg = ModelConfig.model_validate(ref_info["model_config"])
    model = build_model(prep, mcfg, ref_info.get("model", "gpr"))
    if not isinstance(model, GPRModel):
        raise GprInputError("the reference must be a gpr/hstu run", file=run, field="model")
    load_weights(model, run)
    return model


def align(
    stage: str,
    init: str | Path,
    simulator: str | Path,
    cfg: GprConfig,
    out: str | Path,
    arr: bool = False,
    progress: bool = True,
    reference: str | Path | None = None,
) -> dict[str, Any]:
    """Run DPO or HEPO from `init`; writes a run directory atomically (see module docstring)."""
    t0 = time.perf_counter()
    ref_path = None if reference is None else Path(reference)
    set_threads(cfg.runtime.threads)
    torch.manual_seed(cfg.seed)
    al = Aligner(Path(init), Path(simulator), cfg, stage, arr, ref_path)
    ac: AlignConfig = cfg.align
    crit = "valid_objective" if ac.select == "objective" else "valid_value"

    def valid() -> dict[str, float]:
        row = {"valid_value": al.validate()}
        if ac.select == "objective":
            row["valid_objective"] = al.validate_objective()
        return row

    best: dict[str, float] = {**valid(), "step": 0}
    log: list[dict[str, Any]] = [dict(best)]
    quiet = not (progress and sys.stderr.isatty())
    with atomic_dir(out) as tmp:
        state = {k: v.clone() for k, v in al.model.state_dict().items()}
        bar = tqdm(range(1, ac.steps + 1), desc=stage, disable=quiet, leave=False)
        for s in bar:
            row: dict[str, Any] = {"step": s, **al.step()}
            if s % ac.eval_every == 0 or s == ac.steps:
                row.update(valid())
                if row[crit] > best[crit]:
                    best = {k: row[k] for k in best if k != "step"} | {"step": s}
                    state = {k: v.clone() for k, v in al.model.state_dict().items()}
                if progress:
                    print(
                        f"{stage} step {s}: reward {row['reward']:.4f} "
                        f"valid {crit[6:]} {row[crit]:.4f}",
                        flush=True,
                    )
            log.append(row)
            bar.set_postfix(reward=f"{row['reward']:.4f}")
        with open(tmp / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in log)
        save_file(
            {k: v.contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors")
        )
        info = {k: v for k, v in al.info.items() if k not in ("epochs_run", "train_windows")}
        config = {**info["config"], "align": ac.model_dump(mode="json"), "seed": cfg.seed}
        info.update(
            config=GprConfig.model_validate(config).model_dump(mode="json"),
            stage=f"{stage}+arr" if arr else stage,
            init=str(init),
            reference=str(reference or init),
            simulator=str(simulator),
            best=best,
            steps=ac.steps,
            first_reward=float(np.mean([r["reward"] for r in log[1 : 1 + ac.eval_every]])),
            last_reward=float(np.mean([r["reward"] for r in log[-ac.eval_every :]])),
            seconds=round(time.perf_counter() - t0, 1),
        )
        copy_catalogue(init, tmp)
        info = seal(tmp, info)
    return info
