"""`make demo`: the whole pipeline that exists so far, on the embedded default, with a report.

ad world -> calibration -> semantic IDs (RQ-Kmeans+) -> GPR (MTP) training -> test HitRate;
Amazon Beauty -> MiniLM embeddings -> semantic IDs. Each stage's outputs stay under --out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpr.core.config import GprConfig
from gpr.data.amazon import import_amazon
from gpr.data.summary import summarize
from gpr.eval.retrieval import evaluate_run
from gpr.tokenizer.pipeline import run_tokenize
from gpr.train.mtp import train
from gpr.world import generate_world
from gpr.world.calibrate import calibrate


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title)
    t.add_column("field")
    t.add_column("value", justify="right")
    for k, v in rows:
        t.add_row(k, v)
    return t


def run_demo(cfg: GprConfig, out: Path, shared: Path) -> None:
    con = Console()
    steps: list[tuple[str, float, str]] = []

    def step(name: str, t0: float, result: str) -> None:
        steps.append((name, time.perf_counter() - t0, result))
        con.print(f"[green]done[/] {name}: {result} ({steps[-1][1]:.1f} s)")

    con.rule(f"ad world ({cfg.preset}, seed {cfg.seed})")
    t = time.perf_counter()
    world = out / "world"
    m = generate_world(cfg.world, cfg.seed, world, cfg.preset)
    step("generate world", t, f"{m['rows']['events']:,} events, {m['rows']['requests']:,} requests")
    cal = calibrate(world)
    con.print(_table(f"world: {world}", [(k, str(v)) for k, v in summarize(world).items()]))

    t = time.perf_counter()
    wtok = out / "world_sids"
    tm = run_tokenize(world, cfg, wtok)
    step("semantic IDs (world)", t, _sid_result(tm))

    t = time.perf_counter()
    run = out / "run_gpr"
    summary = train(world, wtok, cfg, run, "gpr")
    test = evaluate_run(run, "test")
    step(
        "train GPR (MTP)",
        t,
        f"{summary['epochs_run']} epochs, {summary['parameters']:,} parameters",
    )

    con.rule("Amazon Beauty (TIGER leave-one-out)")
    t = time.perf_counter()
    beauty = out / "beauty"
    b = import_amazon(
        shared / "amazon_beauty" / "Beauty.txt",
        shared / "amazon_beauty" / "item_meta.tsv",
        beauty,
        "beauty",
    )
    step("import Beauty", t, f"{b['rows']['interactions']:,} interactions")
    t = time.perf_counter()
    btm = run_tokenize(beauty, cfg, out / "beauty_sids")
    step("MiniLM + semantic IDs (Beauty)", t, _sid_result(btm))

    con.print(_calibration_table(cal))
    report = Table(title=f"demo report ({cfg.preset}, seed {cfg.seed})")
    for c in ("step", "seconds", "result"):
        report.add_column(c)
    for s, sec, res in steps:
        report.add_row(s, f"{sec:.1f}", res)
    con.print(report)
    keys = ("recall@10", "ndcg@10", "hitrate@100", "n_predictions")
    con.print(
        _table(
            "GPR on the ad world, test day (engaged ads)",
            [(k, f"{test[k]:.4f}" if isinstance(test[k], float) else str(test[k])) for k in keys],
        )
    )


def _sid_result(m: dict[str, Any]) -> str:
    cur = "/".join(f"{c:.2f}" for c in m["cur"])
    return f"{m['n_items']:,} items, collision {m['collision_rate']:.1%}, CUR {cur}"


def _calibration_table(cal: dict[str, Any]) -> Table:
    t = Table(title="ad world calibration (hidden truth, budgets ignored)")
    for c in ("policy", "CTR", "CVR", "RPM"):
        t.add_column(c, justify="right")
    for p in ("random", "logging", "oracle"):
        t.add_row(p, f"{cal[p]['ctr']:.2%}", f"{cal[p]['cvr']:.2%}", f"{cal[p]['rpm']:.2f}")
    return t
