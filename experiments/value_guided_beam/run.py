"""Value-guided dynamic beam vs the fixed beam at equal candidate budget (spec §5).

    python experiments/value_guided_beam/run.py --data out/demo/world \
        --runs out/demo/run_gpr out/vg/gpr_s8 out/vg/gpr_s9 --beam 20 \
        --weights 0.5 1 2 --prunes 0 0.5 --out docs/results/value_guided_beam.md

1. On the valid day, with the first run only: the fixed beam and every (weight, prune) of the
   value-guided beam; the setting with the best valid RPM is chosen.
2. On the test day, read once: the fixed beam and the chosen setting for every run (seed), with
   the replay's RPM, CTCVR and wall time (one thread, the same machine, one after the other).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from gpr.core.io import atomic_write_text
from gpr.core.runtime import set_threads
from gpr.eval.simulate import simulate_spec


def replay(run: str, data: str, split: str, sets: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = simulate_spec(run, data, split, overrides=sets)
    return {"rpm": res["rpm"], "ctcvr": res["ctcvr"], "seconds": time.perf_counter() - t0}


def guide_sets(weight: float, prune: float) -> list[str]:
    return [f"serve.guide.weight={weight}", f"serve.guide.prune={prune}"]


def mean_sd(xs: list[float], fmt: str = "{:.2f}") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(sd)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--prunes", type=float, nargs="+", default=[0.0])
    ap.add_argument("--score", nargs="*", default=[], help="serve.score.* items for both arms")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    set_threads(1)
    beam = [f"serve.beam={args.beam}", *args.score]
    lines = ["| setting | valid RPM | valid CTCVR | seconds |", "|---|---|---|---|"]
    fixed = replay(args.runs[0], args.data, "valid", beam)
    lines.append(f"| fixed | {fixed['rpm']:.2f} | {fixed['ctcvr']:.5f} | {fixed['seconds']:.0f} |")
    best, best_rpm = (1.0, 0.0), -1.0
    for w in args.weights:
        for pr in args.prunes:
            r = replay(args.runs[0], args.data, "valid", beam + guide_sets(w, pr))
            lines.append(
                f"| guide w={w:g} prune={pr:g} | {r['rpm']:.2f} | {r['ctcvr']:.5f} "
                f"| {r['seconds']:.0f} |"
            )
            if r["rpm"] > best_rpm:
                best, best_rpm = (w, pr), r["rpm"]
            print(lines[-1], flush=True)
    test: dict[str, list[dict[str, Any]]] = {"fixed": [], "guided": []}
    for run in args.runs:
        test["fixed"].append(replay(run, args.data, "test", beam))
        test["guided"].append(replay(run, args.data, "test", beam + guide_sets(*best)))
        print(run, test["fixed"][-1], test["guided"][-1], flush=True)
    rel = [
        100 * (g["rpm"] / f["rpm"] - 1) for f, g in zip(test["fixed"], test["guided"], strict=True)
    ]
    rows = ["| beam | test RPM | test CTCVR (%) | replay seconds |", "|---|---|---|---|"]
    for name, rs in test.items():
        rows.append(
            f"| {name} | {mean_sd([r['rpm'] for r in rs])} "
            f"| {mean_sd([100 * r['ctcvr'] for r in rs], '{:.3f}')} "
            f"| {mean_sd([r['seconds'] for r in rs], '{:.0f}')} |"
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    doc = [
        "# Value-guided dynamic beam vs the fixed beam",
        "",
        f"Command: `python experiments/value_guided_beam/run.py --data {args.data} --runs "
        f"{' '.join(args.runs)} --beam {args.beam} --weights "
        f"{' '.join(f'{w:g}' for w in args.weights)} --prunes "
        f"{' '.join(f'{p:g}' for p in args.prunes)}"
        + (f" --score {' '.join(args.score)}" if args.score else "")
        + f" --out {args.out}`",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, one torch thread; "
        f"commit {commit}; {datetime.now(UTC):%Y-%m-%d}.",
        "",
        f"Equal candidate budget: beam {args.beam} per MTP head in both; the guided beam ranks the"
        f" {2 * args.beam} best by log p at each semantic level by log p + w · log v(prefix)."
        f" Serving score of both arms: {', '.join(args.score) or 'log p (the default)'}.",
        "",
        f"## Valid day, first run ({args.runs[0]}): the setting is chosen here",
        "",
        *lines,
        "",
        f"Chosen: weight {best[0]:g}, prune {best[1]:g}.",
        "",
        f"## Test day, read once, {len(args.runs)} runs (seeds), mean ± sd",
        "",
        *rows,
        "",
        f"Guided vs fixed RPM per run: {', '.join(f'{x:+.1f} %' for x in rel)} "
        f"(mean {mean_sd(rel, '{:+.1f}')} %).",
        "",
    ]
    atomic_write_text(args.out, "\n".join(doc))
    print("\n".join(doc))


if __name__ == "__main__":
    main()
