"""The golden pipeline: fixed commands on a fixed seed whose figures must not move under refactors.

    python tests/golden/record.py --out figures.json   # record (or print, without --out)

Every step goes through the `gpr` CLI, as a user would run it, on the tiny preset: the ad world
(content hash), its semantic IDs (collision rate), a GPR run and a cascade run replayed on the test
day (RPM, CTCVR), and a tiny GPR run on the first 600 users of Amazon Beauty (test R@10, N@10).
tests/golden/test_golden.py compares a fresh run against figures.json to the last digit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BEAUTY = ROOT.parent / "shared" / "data" / "amazon_beauty"
BEAUTY_USERS = 600


def gpr(*args: str | Path) -> dict[str, Any]:
    """Run one CLI command; the JSON object it prints ({} when it prints none)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "gpr.cli", *map(str, args)], capture_output=True, text=True, env=env
    )
    if p.returncode != 0:
        raise RuntimeError(f"gpr {' '.join(map(str, args))} failed:\n{p.stderr[-3000:]}")
    start = p.stdout.find("{")
    return json.loads(p.stdout[start:]) if start >= 0 else {}


def beauty_subset(out: Path) -> Path:
    """The first BEAUTY_USERS lines of Beauty.txt (one user per line)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = (BEAUTY / "Beauty.txt").read_text().splitlines()[:BEAUTY_USERS]
    (out / "Beauty.txt").write_text("\n".join(lines) + "\n")
    return out / "Beauty.txt"


def record(work: Path) -> dict[str, Any]:
    w, t = work / "world", work / "sids"
    gpr("world", "generate", "--preset", "tiny", "--out", w)
    world = json.loads((w / "manifest.json").read_text())
    tok = gpr("tokenize", "--data", w, "--out", t, "--preset", "tiny")
    tiny = ("--preset", "tiny")
    gpr("train", "--model", "gpr", "--data", w, "--sids", t, *tiny, "--out", work / "g")
    gpr("train", "--model", "cascade", "--data", w, *tiny, "--out", work / "c")
    fig: dict[str, Any] = {
        "world_content_hash": world["content_hash"],
        "tokenizer_collision_rate": tok["collision_rate"],
    }
    for name in ("g", "c"):
        sim = gpr("simulate", "--policy", work / name, "--data", w)
        key = "gpr" if name == "g" else "cascade"
        fig[f"{key}_test_rpm"] = sim["rpm"]
        fig[f"{key}_test_ctcvr"] = sim["ctcvr"]
    seq = beauty_subset(work / "src")
    b, bt = work / "beauty", work / "beauty_sids"
    gpr("data", "import", "amazon", "--seq", seq, "--meta", BEAUTY / "item_meta.tsv", "--out", b)
    gpr("tokenize", "--data", b, "--out", bt, "--preset", "tiny")
    gpr(
        "train", "--model", "gpr", "--data", b, "--sids", bt, "--preset", "tiny",
        "--set", "train.epochs=6", "--out", work / "bg",
    )  # fmt: skip
    ev = gpr("eval", "--run", work / "bg", "--split", "test")
    fig["beauty_test_recall@10"] = ev["recall@10"]
    fig["beauty_test_ndcg@10"] = ev["ndcg@10"]
    fig["beauty_test_hitrate@100"] = ev["hitrate@100"]
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        fig = record(Path(d))
    text = json.dumps(fig, indent=2, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
