"""`make demo`: the whole pipeline that exists so far, on the embedded default, with a report."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gpr.config import GprConfig
from gpr.data.amazon import import_amazon
from gpr.data.summary import summarize
from gpr.world import generate_world
from gpr.world.calibrate import calibrate


def run_demo(cfg: GprConfig, out: Path, shared: Path) -> None:
    con = Console()
    steps: list[tuple[str, float, str]] = []

    t = time.perf_counter()
    con.rule(f"1. ad world ({cfg.preset}, seed {cfg.seed})")
    world_dir = out / "world"
    m = generate_world(cfg.world, cfg.seed, world_dir, cfg.preset)
    steps.append(("generate world", time.perf_counter() - t, f"{m['rows']['events']:,} events"))
    cal = calibrate(world_dir)

    t = time.perf_counter()
    con.rule("2. Amazon Beauty (TIGER leave-one-out)")
    beauty_dir = out / "beauty"
    b = import_amazon(
        shared / "amazon_beauty" / "Beauty.txt",
        shared / "amazon_beauty" / "item_meta.tsv",
        beauty_dir,
        "beauty",
    )
    steps.append(
        ("import Beauty", time.perf_counter() - t, f"{b['rows']['interactions']:,} interactions")
    )

    for name, path in (("ad world", world_dir), ("Beauty", beauty_dir)):
        table = Table(title=f"{name}: {path}")
        table.add_column("field")
        table.add_column("value", justify="right")
        for k, v in summarize(path).items():
            table.add_row(k, str(v))
        con.print(table)

    table = Table(title="ad world calibration (hidden truth, budgets ignored)")
    for c in ("policy", "CTR", "CVR", "RPM"):
        table.add_column(c, justify="right")
    for p in ("random", "logging", "oracle"):
        table.add_row(p, f"{cal[p]['ctr']:.2%}", f"{cal[p]['cvr']:.2%}", f"{cal[p]['rpm']:.2f}")
    con.print(table)

    report = Table(title="demo report")
    for c in ("step", "seconds", "result"):
        report.add_column(c)
    for s, sec, res in steps:
        report.add_row(s, f"{sec:.1f}", res)
    con.print(report)
