"""Where the cascade ranker's pCTR AUC is lost: a decomposition against the hidden truth.

    python experiments/ranking_gap/ranking_gap.py [--seeds 7 8 9] [--cache out/bench]
        [--runs 'out/bench/cascade_s{seed}'] [--out docs/results/ranking_gap.md]

On each seed's test impressions (worlds and cascade runs as experiments/business/business.py caches
them):
- the AUC of the ranker's pCTR and of the true pCTR (the ceiling);
- the true logit without each of its terms (what each term is worth);
- the least-squares coefficients of the ranker's logit on the true terms (1.0 = fully captured);
- what an observer who knew each user exactly (interests, weights, offset) could do with the
  session: the truth with its session term replaced by its Bayes posterior mean given the
  subtopics of the session's earlier views, and by its prior mean (no views);
- with `--glm`: an L2 logistic regression fitted on the train impressions over the wide part's
  inputs (the 20 match features + scene/slot/device/hour one-hots), alone, with the observable
  session-topic features (topics.py), and with one oracle column from the truth (the prior or
  posterior mean above, or the exact session term): how far the ranker's inputs could go if it
  knew the hidden user model.
Diagnostics only: the truth is read here, never by a model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpr.cascade.config import cascade_config
from gpr.cascade.features import (
    ENV_SIZES,
    N_MATCH,
    Catalog,
    FeatureEmbedder,
    match_features,
    session_views,
)
from gpr.cascade.load import Cascade, load_cascade
from gpr.cascade.train import Impressions, impressions, predict
from gpr.core.metrics import auc
from gpr.eval.simulate import SimData
from gpr.market.journeys import LogData
from gpr.world.response import session_latent, view_subtopic_logits
from gpr.world.truth import Truth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "business"))  # the sibling experiment
from business import ms  # noqa: E402  (mean ± sd, ddof 1, as in the business tables)

F4 = "{:.4f}"
TERMS = ("session", "long", "quality", "slot", "env")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def session_bayes(
    t: Truth,
    request_ids: np.ndarray,
    ad_items: np.ndarray,
    view_sub: np.ndarray,
    organic_sub: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(posterior, prior) means of the true session term, knowing the user exactly; view_sub
    (N, L) subtopics of the session's earlier views, -1 where none."""
    r = np.asarray(request_ids)
    users = t.req_user[r]
    days = np.clip(t.req_day[r], 0, t.interests.shape[0] - 1)
    topics = t.interests[days, users]  # (N, 4), -1 padding
    w = t.weights[users] * (topics >= 0)
    n, k = topics.shape
    z = session_latent(
        t.sub_centroid, np.maximum(topics, 0).ravel(), np.repeat(t.offset[users], k, 0)
    ).reshape(n, k, -1)
    lp = view_subtopic_logits(t.cfg, t.sub_centroid, organic_sub, z.reshape(n * k, -1))
    lp = (lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)).reshape(n, k, -1)
    seen = view_sub >= 0
    ll = np.take_along_axis(lp, np.maximum(view_sub, 0)[:, None, :].repeat(k, 1), 2)
    ll = (ll * seen[:, None, :]).sum(-1)  # (N, K)
    with np.errstate(divide="ignore"):
        log_post = np.where(w > 0, np.log(w) + ll, -np.inf)
    post = np.exp(log_post - log_post.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    v = t.item_latent[np.asarray(ad_items)]
    aff = t.cfg.ctr_session * np.einsum("nkd,nd->nk", z, v)
    prior = w / w.sum(1, keepdims=True)
    return (post * aff).sum(1), (prior * aff).sum(1)


def _bayes_terms(data: SimData, cat: Catalog, imp: Impressions) -> dict[str, np.ndarray]:
    """The session term, its posterior and prior means (session_bayes) for impressions."""
    logs, t = data.logs, data.truth
    req, item = logs.journeys.request[imp.pos], logs.ads.item_id[imp.ad]
    r = {k: torch.from_numpy(getattr(imp.req, k)) for k in ("o_item", "o_sess")}
    view_sub = np.where(
        session_views(r).numpy(), cat.subtopic[imp.req.o_item.astype(np.int64)] - 1, -1
    )
    organic = logs.items.column("kind").to_numpy(zero_copy_only=False) != "ad"
    organic_sub = logs.items.column("subtopic").to_numpy()[organic]
    post, prior = session_bayes(t, req, item, view_sub, organic_sub)
    return {"session": t.ctr_terms(req, item)["session"], "posterior": post, "prior": prior}


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """L2 logistic regression by L-BFGS; returns weights with the bias last."""
    xt = torch.from_numpy(np.c_[x, np.ones(len(x))]).double()
    yt = torch.from_numpy(y).double()
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w, yt)
        loss = loss + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[arg-type]
    return w.detach().numpy()


GLM_ROWS = (
    "inputs",
    "inputs + session topics",
    "inputs + prior",
    "inputs + posterior",
    "inputs + session term",
)


def glm_oracles(data: SimData) -> dict[str, float]:
    """Test AUC of L2 logistic regressions on the ranker's wide inputs, with and without the
    session-topic features and one truth column each (train impressions fit them)."""
    cfg = cascade_config("small")
    cat = Catalog.from_logs(data.logs, cfg)
    emb = FeatureEmbedder(cat, 4, 0.0)
    split: dict[str, dict[str, np.ndarray]] = {}
    for name in ("train", "test"):
        imp = impressions(data.logs, cat, name, cfg)
        with torch.no_grad():
            m = match_features(emb, imp.req.tensors(), torch.from_numpy(imp.ad)[:, None])
        env = [np.eye(n)[imp.req.env[:, i]] for i, n in enumerate(ENV_SIZES)]
        split[name] = {
            "m": m[:, 0].numpy(),
            "env": np.concatenate(env, 1),
            "y": imp.click,
            **_bayes_terms(data, cat, imp),
        }
    mu, sd = split["train"]["m"].mean(0), split["train"]["m"].std(0) + 1e-6

    def design(d: dict[str, np.ndarray], row: str) -> np.ndarray:
        width = None if row == "inputs + session topics" else N_MATCH
        x = [((d["m"] - mu) / sd)[:, :width], d["env"]]
        oracle = row.removeprefix("inputs + ").removesuffix(" term")
        if oracle in ("prior", "posterior", "session"):
            x.append(d[oracle][:, None])
        return np.concatenate(x, 1)

    out = {}
    for row in GLM_ROWS:
        w = _logistic(design(split["train"], row), split["train"]["y"])
        out[row] = auc(split["test"]["y"], design(split["test"], row) @ w[:-1] + w[-1])
    return out


def ranker_fit(c: Cascade, logs: LogData, x: np.ndarray, session: np.ndarray) -> dict[str, Any]:
    """The ranker's test AUC and the least-squares fit of its logit on the true terms x. The
    test impressions are featurised with the cascade's own catalogue (its session topics)."""
    imp = impressions(logs, c.cat, "test", c.cfg)
    ours = _logit(predict(c.ranking, imp)[0])
    coef, *_ = np.linalg.lstsq(x, ours, rcond=None)
    out: dict[str, Any] = {
        "logit": ours,
        "auc": auc(imp.click, ours),
        "auc_sd": paired_auc_sd(imp.click, ours, None, 0),
        "coef": {k: float(b) for k, b in zip(TERMS, coef, strict=False)},
        "r2": float(1 - ((ours - x @ coef) ** 2).mean() / ours.var()),
    }
    return out


def paired_auc_sd(
    y: np.ndarray, a: np.ndarray, b: np.ndarray | None, seed: int, n: int = 200
) -> float:
    """Bootstrap sd (impressions resampled) of AUC(a) - AUC(b), or of AUC(a) when b is None."""
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        stats.append(auc(y[i], a[i]) - (auc(y[i], b[i]) if b is not None else 0.0))
    return float(np.std(stats))


def run_seed(seed: int, cache: Path, runs: list[str], glm: bool = False) -> dict[str, Any]:
    data = SimData.load(cache / f"world_s{seed}")
    logs, t = data.logs, data.truth
    cascades = [load_cascade(Path(run.format(seed=seed)), logs) for run in runs]
    imp = impressions(logs, cascades[0].cat, "test", cascades[0].cfg)
    req, item = logs.journeys.request[imp.pos], logs.ads.item_id[imp.ad]
    y = imp.click
    terms = t.ctr_terms(req, item)
    full = sum(terms.values())
    x = np.stack([terms[k] for k in TERMS] + [np.ones(len(y))], 1)
    bayes = _bayes_terms(data, cascades[0].cat, imp)
    post, prior = bayes["posterior"], bayes["prior"]
    fits = {
        run: ranker_fit(c, logs, x, terms["session"]) for run, c in zip(runs, cascades, strict=True)
    }
    first = fits[runs[0]]["logit"]
    for fit in fits.values():  # paired bootstrap of the AUC difference to the first ranker
        fit["auc_diff_sd"] = paired_auc_sd(y, fit.pop("logit"), first, seed)
    return {
        "seed": seed,
        "n_impressions": len(y),
        "n_clicks": int(y.sum()),
        "rankers": fits,
        "auc_truth": auc(y, full),
        "auc_without": {k: auc(y, full - terms[k]) for k in TERMS},
        "auc_session_posterior": auc(y, full - terms["session"] + post),
        "auc_session_prior": auc(y, full - terms["session"] + prior),
        **({"glm": glm_oracles(data)} if glm else {}),
    }


def report(args: argparse.Namespace, res: list[dict[str, Any]]) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    seeds = " ".join(str(r["seed"]) for r in res)
    runs = " ".join(f"--runs '{x}'" for x in args.runs)
    lines = [
        "# Where the ranking AUC is lost",
        "",
        f"`python experiments/ranking_gap/ranking_gap.py --seeds {seeds} --cache {args.cache} "
        f"{runs}"
        f"{' --glm' if args.glm else ''}` — small world, "
        f"test impressions; {platform.machine()}, commit {commit}; {datetime.date.today()}.",
        "Mean ± std over seeds; per seed in the JSON (`--json`).",
        "",
        "| scores of the test impressions | pCTR AUC |",
        "|---|---|",
    ]
    for run in args.runs:
        lines.append(
            f"| cascade ranker `{run}` | {ms([r['rankers'][run]['auc'] for r in res], F4)} |"
        )
    lines.append(f"| truth (ceiling) | {ms([r['auc_truth'] for r in res], F4)} |")
    for k in TERMS:
        lines.append(
            f"| truth without its {k} term | {ms([r['auc_without'][k] for r in res], F4)} |"
        )
    lines += [
        "| truth, session term := its posterior mean given the user and the session's views | "
        f"{ms([r['auc_session_posterior'] for r in res], F4)} |",
        "| truth, session term := its prior mean given the user (no views) | "
        f"{ms([r['auc_session_prior'] for r in res], F4)} |",
        "",
        "Least-squares coefficients of each ranker's pCTR logit on the true terms (1.0 = the"
        " term is fully captured, 0 = not at all), and the R² of that fit:",
        "",
        "| ranker | " + " | ".join(TERMS) + " | R² |",
        "|---|" + "---|" * (len(TERMS) + 1),
    ]
    for run in args.runs:
        fits = [r["rankers"][run] for r in res]
        cells = [ms([f["coef"][k] for f in fits], "{:.3f}") for k in TERMS]
        cells.append(ms([f["r2"] for f in fits], "{:.3f}"))
        lines.append(f"| `{run}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per seed: each ranker's AUC with its bootstrap sd (200 resamples of the impressions), the"
        f" paired bootstrap sd of its AUC difference to `{args.runs[0]}`:",
        "",
        "| ranker | seed | AUC | AUC sd | AUC − first | sd of the difference |",
        "|---|---|---|---|---|---|",
    ]
    for run in args.runs:
        for r in res:
            f, base = r["rankers"][run], r["rankers"][args.runs[0]]["auc"]
            lines.append(
                f"| `{run}` | {r['seed']} | {f['auc']:.4f} | {f['auc_sd']:.4f} | "
                f"{f['auc'] - base:+.4f} | {f['auc_diff_sd']:.4f} |"
            )
    if all("glm" in r for r in res):
        lines += [
            "",
            "L2 logistic regressions on the ranker's wide inputs (20 match features + scene /"
            " slot / device / hour one-hots), fitted on the train impressions (`--glm`); the"
            " oracle columns come from the truth (the rows above):",
            "",
            "| test AUC of the regression on | mean ± sd | "
            + " | ".join(f"seed {r['seed']}" for r in res)
            + " |",
            "|---|---|" + "---|" * len(res),
        ]
        for row in GLM_ROWS:
            vals = [r["glm"][row] for r in res]
            lines.append(
                f"| {row} | {ms(vals, F4)} | " + " | ".join(F4.format(v) for v in vals) + " |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    ap.add_argument("--cache", type=Path, default=Path("out/bench"))
    ap.add_argument("--runs", action="append", help="cascade run dir pattern (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--glm", action="store_true", help="also the logistic regressions with oracles")
    args = ap.parse_args()
    args.runs = args.runs or ["out/bench/cascade_s{seed}"]
    res = [run_seed(s, args.cache, args.runs, args.glm) for s in args.seeds]
    text = report(args, res)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
