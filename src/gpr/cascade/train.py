"""Train the cascade on the logs (`gpr train --model cascade`) and evaluate its ranking AUC.

    train_cascade(data_dir, cascade_config('small'), seed, out)  # -> run.json's content
    evaluate_ranking(out, data_dir, 'test')  # -> auc_ctr, gauc_ctr, auc_cvr, ...

Ranking: trained on the train days' impressions (ESMM loss), early-stopped on the valid day's CTR
AUC (the best epoch's weights are kept). Retrieval: in-batch softmax over the train days' clicks
(plus impressions when clicks are few), a fixed number of epochs; its recall@k of the valid day's
clicked ads among the eligible ones is logged. Never reads the hidden truth.

Run directory: run.json (model 'cascade', config, data, catalog hash, metrics), ranking.safetensors,
retrieval.safetensors, metrics.jsonl (one line per epoch); written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from gpr.cascade.config import CascadeConfig
from gpr.cascade.features import Catalog, RequestFeatures, request_features
from gpr.cascade.ranking import RankingModel, esmm_loss
from gpr.cascade.retrieval import RetrievalModel
from gpr.core.config import RuntimeConfig
from gpr.core.errors import GprInputError
from gpr.core.io import atomic_dir, file_sha256
from gpr.core.metrics import auc, gauc
from gpr.core.run import seal
from gpr.core.runtime import limit_threads
from gpr.market.ads import eligible_mask
from gpr.market.journeys import LogData


@dataclass
class Impressions:
    req: RequestFeatures
    ad: np.ndarray  # ad index of the shown ad
    click: np.ndarray  # float32 0/1 (conversions count as clicks)
    conv: np.ndarray
    user: np.ndarray  # user id (GAUC groups)
    pos: np.ndarray  # E-row position of the request

    def __len__(self) -> int:
        return len(self.ad)


def impressions(logs: LogData, cat: Catalog, split: str, cfg: CascadeConfig) -> Impressions:
    jour = logs.journeys
    rows = jour.impressions(split)
    if cfg.max_train_impressions is not None and split == "train":
        rows = rows[-cfg.max_train_impressions :]
    ad = logs.ads.index_of(jour.item[rows])
    rows = rows[ad >= 0]
    ad = ad[ad >= 0]
    pos = jour.positions(jour.request[rows])
    act = jour.action[rows]
    return Impressions(
        req=request_features(
            jour, logs.users, cat, pos, cfg.n_hist_organic, cfg.n_hist_ads, cfg.n_long
        ),
        ad=ad,
        click=(act >= 1).astype(np.float32),
        conv=(act == 2).astype(np.float32),
        user=jour.user[rows],
        pos=pos,
    )


@torch.no_grad()
def predict(model: RankingModel, imp: Impressions, batch: int = 4096) -> tuple[np.ndarray, ...]:
    """pCTR, pCVR of each impression's shown ad."""
    model.eval()
    ctr, cvr = [], []
    for lo in range(0, len(imp), batch):
        idx = np.arange(lo, min(lo + batch, len(imp)))
        s = model.request_state(imp.req.take(idx).tensors())
        c, v = model(s, torch.from_numpy(imp.ad[idx])[:, None])
        ctr.append(torch.sigmoid(c[:, 0]).numpy())
        cvr.append(torch.sigmoid(v[:, 0]).numpy())
    return np.concatenate(ctr), np.concatenate(cvr)


def ranking_metrics(model: RankingModel, imp: Impressions) -> dict[str, float]:
    pctr, pcvr = predict(model, imp)
    clicked = imp.click > 0
    return {
        "auc_ctr": auc(imp.click, pctr),
        "gauc_ctr": gauc(imp.click, pctr, imp.user),
        "auc_cvr": auc(imp.conv[clicked], pcvr[clicked]),
        "auc_ctcvr": auc(imp.conv, pctr * pcvr),
        "n_impressions": len(imp),
        "n_clicks": int(clicked.sum()),
        "n_conversions": int(imp.conv.sum()),
    }


def _log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def _fit(
    model: RankingModel,
    params: list[torch.nn.Parameter],
    epochs: int,
    stage: str,
    train: Impressions,
    valid: Impressions,
    cfg: CascadeConfig,
    rng: np.random.Generator,
    best: dict[str, Any],
    log: Path | None,
) -> dict[str, Any]:
    """Train `params` for up to `epochs`, keep the best valid-AUC state (also across stages)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    bad = 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = rng.permutation(len(train))
        losses = []
        for lo in range(0, len(perm), cfg.batch_size):
            idx = perm[lo : lo + cfg.batch_size]
            s = model.request_state(train.req.take(idx).tensors())
            c, v = model(s, torch.from_numpy(train.ad[idx])[:, None])
            loss = esmm_loss(
                c[:, 0],
                v[:, 0],
                torch.from_numpy(train.click[idx]),
                torch.from_numpy(train.conv[idx]),
                cfg.ctcvr_weight,
                cfg.cvr_weight,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        m = ranking_metrics(model, valid)
        row = {
            "stage": f"ranking-{stage}",
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "first_loss": losses[0],
            "last_loss": float(np.mean(losses[-10:])),
            **{f"valid_{k}": v for k, v in m.items()},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if log is not None:
            _log(log, row)
        if m["auc_ctr"] > best["auc_ctr"]:
            best = {**m, "stage": stage, "epoch": epoch, "loss": row["loss"]}
            best["state"] = {k: v.clone() for k, v in model.state_dict().items()}
            bad = 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    return best


def train_ranking(
    model: RankingModel,
    train: Impressions,
    valid: Impressions,
    cfg: CascadeConfig,
    rng: np.random.Generator,
    log: Path | None = None,
) -> dict[str, Any]:
    """Stage-wise: the wide part (a GLM on the match features) to convergence, then the deep part
    as a residual starting at zero, all early-stopped on the valid day's CTR AUC; the best state
    over both stages is kept, so the deep stage can only be kept if it helps on valid."""
    clicks = float(train.click.sum())
    model.init_bias(clicks / len(train), float(train.conv.sum()) / max(clicks, 1.0))
    best: dict[str, Any] = {"auc_ctr": -1.0, "state": None}
    model.zero_deep_output()  # every saved state's deep part is 0 until the deep stage moves it
    model.deep = False
    best = _fit(
        model, model.wide_parameters(), cfg.wide_epochs, "wide", train, valid, cfg, rng, best, log
    )
    if cfg.deep:
        model.load_state_dict(best["state"])
        model.deep = True
        params = [p for p in model.parameters() if p.requires_grad]
        best = _fit(model, params, cfg.epochs, "deep", train, valid, cfg, rng, best, log)
    model.load_state_dict(best.pop("state"))
    model.deep = cfg.deep and best["stage"] == "deep"
    best["deep_used"] = model.deep
    return best


@torch.no_grad()
def retrieval_recall(
    model: RetrievalModel, logs: LogData, imp: Impressions, k: int, batch: int = 1024
) -> float:
    """Share of clicked impressions whose ad is in the top-k of the eligible ads (budgets
    ignored); NaN without clicks."""
    model.eval()
    sel = np.nonzero(imp.click > 0)[0]
    if len(sel) == 0:
        return float("nan")
    ad_vec = model.ad_vec(torch.arange(logs.ads.n))
    hits = 0
    for lo in range(0, len(sel), batch):
        idx = sel[lo : lo + batch]
        u = model.user_vec(imp.req.take(idx).tensors())
        score = (u @ ad_vec.T).numpy()
        elig = eligible_mask(logs.ads, logs.users, imp.user[idx], imp.req.day[idx])
        score = np.where(elig, score, -np.inf)
        mine = score[np.arange(len(idx)), imp.ad[idx]]
        hits += int(((score > mine[:, None]).sum(1) < k).sum())
    return hits / len(sel)


def train_retrieval(
    model: RetrievalModel,
    logs: LogData,
    train: Impressions,
    valid: Impressions,
    cfg: CascadeConfig,
    rng: np.random.Generator,
    log: Path | None = None,
) -> dict[str, Any]:
    clicks = np.nonzero(train.click > 0)[0]
    if len(clicks) >= cfg.min_positives:
        sel, weight = clicks, np.ones(len(clicks), np.float32)
    else:
        sel = np.arange(len(train))
        weight = (1 + cfg.click_weight * train.click).astype(np.float32)
    count = np.bincount(train.ad[sel], minlength=logs.ads.n)
    log_q = np.log(count[train.ad[sel]] / len(sel)).astype(np.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    out: dict[str, Any] = {"positives": len(sel), "clicks_only": len(sel) == len(clicks)}
    for epoch in range(cfg.retrieval_epochs):
        t0 = time.perf_counter()
        model.train()
        perm = rng.permutation(len(sel))
        losses = []
        for lo in range(0, len(perm), cfg.batch_size):
            j = perm[lo : lo + cfg.batch_size]
            if len(j) < 2:
                continue
            idx = sel[j]
            loss = model.loss(
                train.req.take(idx).tensors(),
                torch.from_numpy(train.ad[idx]),
                torch.from_numpy(weight[j]),
                torch.from_numpy(log_q[j]),
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        recall = retrieval_recall(model, logs, valid, cfg.retrieval_k)
        row = {
            "stage": "retrieval",
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "first_loss": losses[0] if losses else float("nan"),
            "last_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
            f"valid_recall_at_{cfg.retrieval_k}": recall,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if log is not None:
            _log(log, row)
        out.update(loss=row["loss"], valid_recall=recall, epoch=epoch)
    return out


def train_cascade(
    data_dir: Path,
    cfg: CascadeConfig,
    seed: int,
    out: Path,
    logs: LogData | None = None,
    threads: int | None = RuntimeConfig().threads,
) -> dict[str, Any]:
    """Train retrieval and ranking on `data_dir`'s train days; write the run directory `out`.
    `threads`: torch and BLAS threads while training (`runtime.threads`)."""
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    logs = logs if logs is not None else LogData.load(data_dir)
    cat = Catalog.from_logs(logs, cfg)
    n_users = len(logs.users.age_band)
    train = impressions(logs, cat, "train", cfg)
    valid = impressions(logs, cat, "valid", cfg)
    if len(train) == 0 or train.click.sum() == 0:
        raise GprInputError("no clicked impressions on the train days", file=data_dir)
    with atomic_dir(out) as tmp, limit_threads(threads):
        log = tmp / "metrics.jsonl"
        ranking = RankingModel(cat, cfg)
        r_best = train_ranking(ranking, train, valid, cfg, rng, log)
        retrieval = RetrievalModel(cat, cfg)
        q_best = train_retrieval(retrieval, logs, train, valid, cfg, rng, log)
        save_file(_state(ranking), str(tmp / "ranking.safetensors"))
        save_file(_state(retrieval), str(tmp / "retrieval.safetensors"))
        meta = {
            "model": "cascade",
            "data": str(Path(data_dir).resolve()),
            "items_sha256": file_sha256(data_dir / "items.parquet"),
            "n_users": n_users,
            "n_ads": logs.ads.n,
            "ranking_deep": ranking.deep,
            "seed": seed,
            "config": cfg.model_dump(mode="json"),
            "metrics": {
                "ranking": r_best,
                "retrieval": q_best,
                "n_train_impressions": len(train),
                "n_valid_impressions": len(valid),
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        meta = seal(tmp, meta)
    return meta


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def evaluate_ranking(
    run_dir: Path, data_dir: Path, split: str = "test", logs: LogData | None = None
) -> dict[str, Any]:
    """`gpr eval` for a cascade run: AUC / GAUC of pCTR, AUC of pCVR (clicked impressions) and of
    pCTR x pCVR (all impressions) on the split's logged impressions."""
    from gpr.cascade.load import load_cascade

    logs = logs if logs is not None else LogData.load(data_dir)
    c = load_cascade(Path(run_dir), logs)
    imp = impressions(logs, c.cat, split, c.cfg)
    if len(imp) == 0:
        raise GprInputError(f"no impressions in split '{split}'", field="split")
    return {**ranking_metrics(c.ranking, imp), "split": split}
