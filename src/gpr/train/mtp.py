"""MTP pre-training (spec §4.1) of GPR and its baselines (HSTU, TIGER, SASRec), with validation.

gpr train --model gpr --data DIR --sids TOK --preset small --out RUN
gpr eval --run RUN --split test --out eval.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from gpr.config import GprConfig, ModelConfig
from gpr.data.schema import load_dataset
from gpr.errors import GprInputError
from gpr.eval.retrieval import retrieval_metrics
from gpr.io import atomic_dir, read_json, write_json
from gpr.model.baselines import TIGER, SASRec
from gpr.model.gpr import GPRModel
from gpr.model.journey import (
    SPLIT_CODE,
    Batch,
    I,
    Journeys,
    SidTable,
    Window,
    build_journeys,
    collate,
    make_windows,
    next_targets,
    positions_for_split,
    prediction_mask,
    tail_windows,
    target_rows,
)
from gpr.model.thoughts import cached_topic_table, item_topics, topic_table, window_thoughts
from gpr.model.trie import Trie
from gpr.threads import set_threads
from gpr.tokenizer.embed import CACHE_DIR, MINILM_MODEL, embed_items, minilm_encoder
from gpr.tokenizer.pipeline import saved_tokenizer_input

MODELS = ("gpr", "hstu", "tiger", "sasrec")
Recommender = GPRModel | TIGER | SASRec


def model_config_for(name: str, cfg: ModelConfig) -> ModelConfig:
    """`hstu`: the paper's baseline, every HHD component off and a single next-token head.

    `tiger` / `sasrec` get the same settings (they read only d_model, layers, heads, dropout and
    max_len; one head, so one next-item target per position).
    """
    if name not in MODELS:
        raise GprInputError(
            f"unknown model '{name}' (choose from {', '.join(MODELS)})", field="model"
        )
    if name == "gpr":
        return cfg
    return cfg.model_copy(
        update=dict(
            hybrid_attention=False,
            token_aware_ln=False,
            token_aware_ffn=False,
            mor_extra=0,
            thought_tokens=0,
            thinking_tokens=0,
            refining=False,
            hte=False,
            mtp_heads=1,
            mtp_weights=None,
        )
    )


@dataclass
class Prepared:
    journeys: Journeys
    sids: SidTable
    trie: Trie
    targets: np.ndarray
    pred_mask: np.ndarray
    engaged_only: bool  # ad world: evaluate on requests whose shown ad was clicked
    item_topic: np.ndarray | None = None  # thought tokens: topic of every item
    thought_table: torch.Tensor | None = None  # (n_topics, dim) embedded thought texts
    content_table: torch.Tensor | None = None  # (n_items, dim) item content, by item id

    def batch(
        self,
        windows: list[Window],
        splits: tuple[int, ...],
        max_len: int,
        thoughts: int,
        pred_mask: np.ndarray | None = None,
    ) -> Batch:
        """Collate windows (labels only from `splits`) and attach their thought tokens.

        `pred_mask` overrides where predictions are made (serving: exactly at given requests).
        """
        j, pm = self.journeys, self.pred_mask if pred_mask is None else pred_mask
        b = collate(j, windows, self.sids, self.targets, pm, splits, max_len)
        if thoughts > 0 and self.item_topic is not None:
            t = window_thoughts(j, windows, self.item_topic, thoughts, self.engaged_only)
            b.thought = torch.from_numpy(t)
        return b

    def at_requests(self, pos: np.ndarray, max_len: int, thoughts: int) -> Batch:
        """One prediction exactly at each position (a request's E token), the past before it as
        context; no labels attached (serving, rollouts)."""
        only = np.zeros(len(self.journeys.ttype), dtype=bool)
        only[pos] = True
        return self.batch(tail_windows(self.journeys, pos, max_len), (), max_len, thoughts, only)

    @property
    def level_sizes(self) -> list[int]:
        return list(self.trie.sizes)


def prepare(
    data_dir: str | Path,
    sids_dir: str | Path,
    mcfg: ModelConfig,
    codebook_size: int,
    thought_encoder: Callable[[list[str]], np.ndarray] | None = None,
) -> Prepared:
    """Dataset + SIDs -> journeys, targets, trie (and the thought-token table when enabled)."""
    ds = load_dataset(data_dir)
    j = build_journeys(ds)
    sids = SidTable.load(sids_dir, codebook_size)
    ids = ds.col("items", "item_id")
    if len(sids.codes) <= ids.max() or (sids.codes[ids] < 0).any():
        raise GprInputError(
            "the semantic IDs do not cover every item of the dataset",
            file=sids_dir,
            field="item_id",
        )
    targets = next_targets(j, mcfg.mtp_heads)
    pm = prediction_mask(j, targets)
    ads = np.nonzero(sids.is_target)[0]
    sizes = [sids.codebook_size] * sids.levels + [int(sids.dedup[ads].max()) + 1]
    trie = Trie(np.c_[sids.codes[ads], sids.dedup[ads]], sizes, ads)
    prep = Prepared(j, sids, trie, targets, pm, engaged_only=bool((j.ttype == 2).any()))
    if mcfg.thought_tokens > 0:
        prep.item_topic, phrases = item_topics(ds)
        if thought_encoder is not None:
            table = topic_table(phrases, thought_encoder)
        else:
            table = cached_topic_table(
                Path(data_dir) / CACHE_DIR, phrases, minilm_encoder, MINILM_MODEL
            )
        prep.thought_table = torch.from_numpy(table)
    if mcfg.content_input or mcfg.item_head:
        emb = embed_items(data_dir)
        x = emb.matrix
        if mcfg.content_source == "tokenizer":
            x = saved_tokenizer_input(data_dir, sids_dir, emb)
        table = np.zeros((len(sids.codes), x.shape[1]), dtype=np.float32)
        table[np.asarray(emb.item_ids)] = x
        prep.content_table = torch.from_numpy(table)
    return prep


def eval_positions(prep: Prepared, split: str, limit: int | None, seed: int) -> np.ndarray:
    pos = positions_for_split(prep.journeys, prep.pred_mask, split)
    if prep.engaged_only:  # the label is the ad the user engaged with (clicked)
        nxt = prep.journeys.action[np.minimum(pos + 1, len(prep.journeys.ttype) - 1)]
        pos = pos[
            (prep.journeys.ttype[np.minimum(pos + 1, len(prep.journeys.ttype) - 1)] == I)
            & (nxt >= 1)
        ]
    if limit is not None and len(pos) > limit:
        pos = np.sort(np.random.default_rng(seed).choice(pos, size=limit, replace=False))
    return pos


@torch.no_grad()
def generate_ranked(
    model: Recommender,
    prep: Prepared,
    positions: np.ndarray,
    beam: int,
    batch_size: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Beam search at each position: (N, beam) items, (N, beam) scores, (N,) labels, (N,) users."""
    model.eval()
    trie = prep.trie.to(device)
    max_len = model.cfg.max_len
    ranked, scores, target, users = [], [], [], []
    for lo in range(0, len(positions), batch_size):
        wins = tail_windows(prep.journeys, positions[lo : lo + batch_size], max_len)
        b = prep.batch(wins, (0, 1, 2), max_len, model.cfg.thought_tokens).to(device)
        items, sc = model.generate(b, trie, beam)
        ranked.append(items.cpu().numpy())
        scores.append(sc.float().cpu().numpy())
        target.append(b.targets[:, 0].cpu().numpy())
        users.append(np.array([w.user for w in wins], dtype=np.int64))
    if not ranked:
        return (
            np.zeros((0, beam), np.int64),
            np.zeros((0, beam)),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    return (
        np.concatenate(ranked),
        np.concatenate(scores),
        np.concatenate(target),
        np.concatenate(users),
    )


def evaluate(
    model: Recommender,
    prep: Prepared,
    positions: np.ndarray,
    beam: int,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    r, _, t, users = generate_ranked(model, prep, positions, beam, batch_size, device)
    out: dict[str, Any] = retrieval_metrics(r, t, prep.trie.items.cpu().numpy())
    out["n_users"] = len(set(users.tolist()))
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(prep: Prepared, mcfg: ModelConfig, name: str = "gpr") -> Recommender:
    """GPRModel for gpr/hstu, else the named baseline."""
    if name == "tiger":
        return TIGER(mcfg, prep.sids.levels, prep.sids.codebook_size, prep.level_sizes[-1])
    if name == "sasrec":
        return SASRec(mcfg, len(prep.sids.codes))
    table = prep.thought_table if mcfg.thought_tokens > 0 else None
    return GPRModel(
        mcfg,
        prep.sids.levels,
        prep.sids.codebook_size,
        prep.level_sizes[-1],
        table,
        n_items=len(prep.sids.codes),
        content=prep.content_table,
    )


def train(
    data_dir: str | Path,
    sids_dir: str | Path,
    cfg: GprConfig,
    out: str | Path,
    model_name: str = "gpr",
    progress: bool = True,
    init: str | Path | None = None,
    token_weight: Callable[[Prepared], np.ndarray] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train with early stopping on the validation split; writes RUN atomically.

    init: a run to start from (its model and model config; VAFT). token_weight: builds a (T,)
    weight per journey token; each target's loss is weighted by its token's (VAFT's ω^V).
    """
    t0 = time.perf_counter()
    tc = cfg.train
    set_threads(tc.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    init_info = read_json(Path(init) / "run.json") if init is not None else None
    if init_info is not None:
        model_name = init_info["model"]
        mcfg = ModelConfig.model_validate(init_info["model_config"])
    else:
        mcfg = model_config_for(model_name, cfg.model)
    prep = prepare(data_dir, sids_dir, mcfg, cfg.tokenizer.codebook_size)
    tok_w = token_weight(prep) if token_weight is not None else None
    dev = _device(tc.device)
    j = prep.journeys
    train_pos = positions_for_split(j, prep.pred_mask, "train")
    windows = make_windows(j, mcfg.max_len, train_pos)
    valid_pos = eval_positions(prep, "valid", tc.max_eval_requests, cfg.seed)
    model = build_model(prep, mcfg, model_name)
    if init is not None:
        load_weights(model, Path(init))
    model = model.to(dev)
    trie = prep.trie.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(windows) / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, tc.warmup_steps, total_steps)
    )
    monitor = "hitrate@100" if prep.engaged_only else "ndcg@10"
    best: dict[str, Any] = {monitor: -1.0}
    bad_epochs, log, stopped_by = 0, [], "epochs"
    with atomic_dir(out) as tmp:
        for epoch in range(tc.epochs):
            model.train()
            order = rng.permutation(len(windows))
            losses = []
            quiet = not (progress and sys.stderr.isatty())
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", disable=quiet, leave=False)
            for s in bar:
                batch = [windows[i] for i in order[s * tc.batch_size : (s + 1) * tc.batch_size]]
                b = prep.batch(batch, (SPLIT_CODE["train"],), mcfg.max_len, mcfg.thought_tokens)
                w = None
                if tok_w is not None:
                    rows = target_rows(j, b.position.numpy(), mcfg.mtp_heads)
                    w = torch.from_numpy(tok_w[np.maximum(rows, 0)]).float().to(dev)
                parts = model.loss(b.to(dev), trie, w)
                opt.zero_grad(set_to_none=True)
                parts["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append({k: float(v.detach()) for k, v in parts.items()})
                bar.set_postfix(loss=f"{losses[-1]['loss']:.3f}")
            row: dict[str, Any] = {
                "epoch": epoch,
                **{k: float(np.mean([x[k] for x in losses if k in x])) for k in losses[0]},
            }
            out_of_time = tc.max_seconds is not None and time.perf_counter() - t0 > tc.max_seconds
            if (epoch + 1) % tc.eval_every == 0 or epoch == tc.epochs - 1 or out_of_time:
                row["valid"] = evaluate(model, prep, valid_pos, tc.beam, tc.batch_size, dev)
                if row["valid"][monitor] > best[monitor]:
                    best = {**row["valid"], "epoch": epoch}
                    save_file(
                        {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
                        str(tmp / "model.safetensors"),
                    )
                    bad_epochs = 0
                else:
                    bad_epochs += 1
            log.append(row)
            with open(tmp / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if progress:
                v = row.get("valid", {})
                print(
                    f"epoch {epoch}: loss {row['loss']:.4f} "
                    f"valid {monitor} {v.get(monitor, float('nan')):.4f}",
                    flush=True,
                )
            if bad_epochs >= tc.patience:
                stopped_by = "patience"
                break
            if out_of_time:
                stopped_by = "max_seconds"
                break
        summary = {
            "model": model_name,
            "data": str(data_dir),
            "sids": str(sids_dir),
            "config": cfg.model_dump(mode="json"),
            "model_config": mcfg.model_dump(mode="json"),
            "level_sizes": prep.level_sizes,
            "monitor": monitor,
            "best": best,
            "epochs_run": len(log),
            "stopped_by": stopped_by,
            "train_windows": len(windows),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - t0, 1),
            "device": str(dev),
            "stage": "mtp",
            **(meta or {}),
        }
        write_json(tmp / "run.json", summary)
        plot_losses(log, tmp / "loss.png")
    return summary


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def plot_losses(log: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [r["epoch"] for r in log]
    for k in sorted({k for r in log for k in r if k not in ("epoch", "valid")}):
        ax[0].plot(ep, [r.get(k, np.nan) for r in log], label=k)
    ax[0].set_xlabel("epoch")
    ax[0].set_title("training loss")
    ax[0].legend(fontsize=7)
    for k in ("recall@10", "ndcg@10", "hitrate@100"):
        ax[1].plot(ep, [r.get("valid", {}).get(k, np.nan) for r in log], label=k)
    ax[1].set_xlabel("epoch")
    ax[1].set_title("validation")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_run(
    run_dir: str | Path, device: str = "cpu"
) -> tuple[Recommender, Prepared, dict[str, Any]]:
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    mcfg = ModelConfig.model_validate(info["model_config"])
    codebook = GprConfig.model_validate(info["config"]).tokenizer.codebook_size
    prep = prepare(info["data"], info["sids"], mcfg, codebook)
    model = build_model(prep, mcfg, info.get("model", "gpr"))
    load_weights(model, run_dir)
    return model.to(_device(device)), prep, info


OPTIONAL_KEYS = ("hte.critic",)  # added after MTP runs were first saved; HEPO trains them


def load_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """Load RUN/model.safetensors; only keys in OPTIONAL_KEYS may be missing from older runs."""
    path = run_dir / "model.safetensors"
    if not path.exists():
        raise GprInputError("file not found (training stored no checkpoint)", file=path)
    res = model.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in res.missing_keys if not k.startswith(OPTIONAL_KEYS)]
    if missing or res.unexpected_keys:
        bad = (missing or res.unexpected_keys)[0]
        raise GprInputError(
            f"checkpoint does not fit the model ({len(missing)} missing, "
            f"{len(res.unexpected_keys)} unexpected tensors)",
            file=path,
            field=bad,
        )


def evaluate_run(
    run_dir: str | Path,
    split: str,
    beam: int | None = None,
    limit: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    if split not in SPLIT_CODE:
        raise GprInputError(f"unknown split '{split}'", field="split")
    model, prep, info = load_run(run_dir, "cpu")
    dev = _device(device)
    model = model.to(dev)
    cfg = GprConfig.model_validate(info["config"])
    pos = eval_positions(prep, split, limit, cfg.seed)
    out = evaluate(model, prep, pos, beam or cfg.train.beam, cfg.train.batch_size, dev)
    out.update(split=split, run=str(run_dir), model=info["model"])
    return out
