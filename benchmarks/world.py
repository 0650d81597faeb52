"""World generation throughput (events/s) and peak memory, per preset.

    python benchmarks/world.py --presets small base [--seed 7] [--json out.json]

Each preset runs in its own process (so peak RSS is that run's alone) and writes to a temp dir.
Prints one markdown row per preset for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, resource
from gpr.core.config import load_config
from gpr.world import generate_world
cfg = load_config(sys.argv[1], seed=int(sys.argv[2]))
m = generate_world(cfg.world, cfg.seed, sys.argv[3], cfg.preset)
print(json.dumps({"events": m["rows"]["events"], "requests": m["rows"]["requests"],
                  "users": m["rows"]["users"], "ads": m["rows"]["ads"], "seconds": m["seconds"]}))
"""


def run(preset: str, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, preset, str(seed), f"{tmp}/world"],
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_seconds"] = round(wall, 1)
    res["events_per_s"] = round(res["events"] / res["seconds"])
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["small", "base"])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = {}
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| preset | users | ads | events | requests | seconds | events/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for p in args.presets:
        r = run(p, args.seed)
        rows[p] = r
        print(
            f"| {p} | {r['users']:,} | {r['ads']:,} | {r['events']:,} | {r['requests']:,} | "
            f"{r['seconds']} | {r['events_per_s']:,} | {r['peak_rss_mb']:,} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
