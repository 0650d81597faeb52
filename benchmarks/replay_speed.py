"""`gpr simulate` of a generative run, this checkout against an earlier commit, side by side.

    python benchmarks/replay_speed.py --baseline 6c4fbf7 --run out/demo/run_gpr \
        --data out/demo/world [--beam 20] [--repeat 1]

The baseline runs from a temporary `git worktree` of that commit (its own src/ on PYTHONPATH),
the current one from this checkout; both replay the test day on one thread, alternating when
--repeat > 1. Prints the wall time of each, their ratio, and whether the replay figures (RPM,
CTR, CTCVR: a function of the ads served) are identical.

    python benchmarks/replay_speed.py --profile 512 --run out/demo/run_gpr --data out/demo/world

profiles this checkout instead: one `rank` of the first N test-day requests in one batch (after a
warm-up), and prints where its time goes (cumulative seconds of the named functions, cProfile).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("rpm", "ctr", "ctcvr", "n_requests")


def replay(src: Path, run: str, data: str, beam: int, out: Path) -> tuple[float, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "gpr.cli", "simulate", "--policy", run, "--data", data]
    cmd += ["--set", f"serve.beam={beam}", "--out", str(out)]
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    res = json.loads(out.read_text())
    return wall, {k: res[k] for k in KEYS if k in res}


PARTS = {  # what the profile reports: function name -> label
    "rank": "GenerativePolicy.rank (total)",
    "encode": "HSD encode (GPRModel.encode)",
    "beam_search": "beam search (all heads)",
    "step_decode": "  cached decoder steps",
    "start_decode": "  decoder prefix pass",
    "legal": "  trie legal codes",
}


def profile(run: str, data: str, beam: int, n: int) -> None:
    import cProfile
    import pstats

    import numpy as np

    from gpr.core.runtime import set_threads
    from gpr.market.journeys import LogData
    from gpr.market.policy import RequestBatch
    from gpr.policy.generative import GenerativePolicy

    set_threads(1)
    pol = GenerativePolicy(Path(run), Path(data), beam=beam)
    logs = LogData.load(data)
    j = logs.journeys
    pos = j.requests("test")[:n]
    batch = RequestBatch.of(j.request[pos], j, logs.ads, logs.users)
    pol.rank(batch.take(np.arange(min(8, n))))  # warm-up
    prof = cProfile.Profile()
    prof.enable()
    pol.rank(batch)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    cum: dict[str, float] = {}
    for (_, _, name), (_, _, _, ct, _) in stats.items():
        if name in PARTS:
            cum[name] = max(cum.get(name, 0.0), ct)
    print(f"one rank of {len(pos)} test-day requests, beam {pol.beam}, 1 thread:")
    for name, label in PARTS.items():
        print(f"{label:34s} {cum.get(name, float('nan')):7.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", help="git commit to compare against")
    ap.add_argument("--profile", type=int, help="profile one rank of N requests instead")
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.profile:
        profile(args.run, args.data, args.beam, args.profile)
        return
    if not args.baseline:
        ap.error("give --baseline COMMIT or --profile N")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            figs: dict[str, dict[str, float]] = {}
            for _ in range(args.repeat):
                for name, src in (("baseline", base / "src"), ("current", ROOT / "src")):
                    out = Path(tmp) / f"{name}.json"
                    wall, figs[name] = replay(src, args.run, args.data, args.beam, out)
                    times[name].append(wall)
                    print(f"{name}: {wall:.1f} s  {figs[name]}", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
            )
    b, c = min(times["baseline"]), min(times["current"])
    print(f"baseline {b:.1f} s, current {c:.1f} s: {b / c:.2f}x faster (best of {args.repeat})")
    print(f"same replay figures: {figs['baseline'] == figs['current']}")


if __name__ == "__main__":
    main()
