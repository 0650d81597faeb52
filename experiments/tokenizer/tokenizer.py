"""Tokenizer benchmark: RQ-Kmeans vs RQ-VAE vs RQ-Kmeans+ on Beauty (MiniLM) and the ad world.

    python experiments/tokenizer/tokenizer.py --beauty ../shared/data/amazon_beauty --world DIR \
        [--preset small] [--out docs/results/tokenizer_raw] [--limit 2000] [--scale 1000000]

- Beauty: imported into --beauty-data (default: a temp dir; reused when it already holds a
  dataset, so the MiniLM embedding cache is kept), embedded with all-MiniLM-L6-v2, then the three
  methods run on the same embeddings (`run_compare`). `--limit N` keeps items 1..N only (users
  keep their remaining items when >= 3 are left), for quick end-to-end runs.
- World: the world at --world (generated there with --preset when it does not exist yet).
- `--scale N`: encode + fit of rq_kmeans_plus on N synthetic clustered 64-d points.

Tokenizer settings come from --preset (and --set overrides). Prints markdown tables with seconds
and seconds per 100k items; with --out, writes the compare directories and summary.json there.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpr.core.config import GprConfig, TokenizerConfig, load_config
from gpr.core.runtime import set_threads
from gpr.data.amazon import import_amazon
from gpr.tokenizer import build_tokenizer
from gpr.tokenizer.embed import embed_items
from gpr.tokenizer.methods import resolve_device
from gpr.tokenizer.pipeline import compare_table, run_compare
from gpr.world import generate_world


def beauty_subset(raw: Path, limit: int, out: Path) -> tuple[Path, Path]:
    """Beauty.txt + item_meta.tsv restricted to item ids 1..limit, written under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (raw / "Beauty.txt").read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        kept = [p for p in parts[1:] if int(p) <= limit]
        if len(kept) >= 3:
            lines.append(" ".join([parts[0], *kept]))
    (out / "Beauty.txt").write_text("\n".join(lines) + "\n")
    meta = (raw / "item_meta.tsv").read_text(encoding="utf-8").splitlines()
    keep = [meta[0]] + [m for m in meta[1:] if int(m.split("\t", 1)[0]) <= limit]
    (out / "item_meta.tsv").write_text("\n".join(keep) + "\n", encoding="utf-8")
    return out / "Beauty.txt", out / "item_meta.tsv"


def warm_up(tcfg: TokenizerConfig, seed: int) -> None:
    """One small fit so that one-off library start-up cost is not charged to the first method."""
    k = tcfg.codebook_size
    x = np.random.default_rng(0).normal(size=(max(2 * k, 512), 16)).astype(np.float32)
    for m in ("rq_kmeans", "rq_kmeans_plus"):
        cfg = tcfg.model_copy(update={"method": m, "epochs": 1, "latent_dim": 8})
        build_tokenizer(cfg, seed).fit(x)


def compare_on(
    name: str, data: Path, cfg: GprConfig, out: Path, embed_device: str, batch: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    emb = embed_items(data, batch_size=batch, device=embed_device)
    embed_s = time.perf_counter() - t0
    n = len(emb.item_ids)
    rows = run_compare(data, cfg, out, embeddings=emb)
    computed = float(emb.meta.get("seconds", 0.0))
    print(
        f"\n## {name}: {n} items, {emb.meta['source']} embeddings ({emb.meta['model']}, "
        f"d={emb.matrix.shape[1]}); embedding took {embed_s:.1f}s in this run, "
        f"{computed:.1f}s when computed ({computed * 1e5 / max(1, n):.1f}s per 100k items)\n"
    )
    print(compare_table(rows, per_100k=True))
    return {"name": name, "n_items": n, "embedding": emb.meta, "rows": rows}


def scale_run(n: int, tcfg: TokenizerConfig, seed: int, dim: int = 64) -> dict[str, Any]:
    """Fit + encode of rq_kmeans_plus on n synthetic clustered points."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1000, dim)).astype(np.float32) * 3
    x = centers[rng.integers(0, len(centers), n)]
    x += rng.normal(size=x.shape).astype(np.float32)
    cfg = tcfg.model_copy(update={"method": "rq_kmeans_plus"})
    tok = build_tokenizer(cfg, seed)
    t0 = time.perf_counter()
    tok.fit(x)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok.encode(x)
    enc_s = time.perf_counter() - t0
    res = {
        "n_items": n,
        "dim": dim,
        "epochs": cfg.epochs,
        "device": str(tok.device),
        "fit_seconds": round(fit_s, 2),
        "encode_seconds": round(enc_s, 2),
        "fit_s_per_100k": round(fit_s * 1e5 / n, 3),
        "encode_s_per_100k": round(enc_s * 1e5 / n, 3),
    }
    print(f"\n## scale: rq_kmeans_plus on {n} synthetic {dim}-d items ({res['device']})\n")
    print("| items | epochs | fit s | encode s | fit s / 100k | encode s / 100k |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {n} | {cfg.epochs} | {fit_s:.2f} | {enc_s:.2f} | {res['fit_s_per_100k']:.3f} "
        f"| {res['encode_s_per_100k']:.3f} |"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--beauty", type=Path, help="dir with Beauty.txt and item_meta.tsv")
    ap.add_argument("--beauty-data", type=Path, help="imported Beauty dataset dir (kept)")
    ap.add_argument("--limit", type=int, default=0, help="keep Beauty items 1..N only")
    ap.add_argument("--world", type=Path, help="world dataset dir (generated if missing)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--scale", type=int, default=0, help="synthetic items for the scale run")
    ap.add_argument("--embed-device", default="auto")
    ap.add_argument("--embed-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        set_threads(args.threads)
    cfg = load_config(args.preset, overrides=args.overrides, seed=args.seed)
    tc = cfg.tokenizer
    dev = resolve_device(tc.device)
    print(
        f"# tokenizer benchmark: preset {cfg.preset}, seed {cfg.seed}, device {dev}"
        f"{' (' + torch.cuda.get_device_name(0) + ')' if dev.type == 'cuda' else ''}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; L={tc.levels} K={tc.codebook_size} epochs={tc.epochs}"
    )
    warm_up(cfg.tokenizer, cfg.seed)
    summary: dict[str, Any] = {"preset": cfg.preset, "seed": cfg.seed, "device": str(dev)}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        out = args.out or tmp / "out"
        if args.beauty is not None:
            data = args.beauty_data or tmp / "beauty"
            if not (data / "manifest.json").exists():
                seq, meta = args.beauty / "Beauty.txt", args.beauty / "item_meta.tsv"
                if args.limit:
                    seq, meta = beauty_subset(args.beauty, args.limit, tmp / "raw")
                import_amazon(seq, meta, data, name="Beauty")
            summary["beauty"] = compare_on(
                "Beauty", data, cfg, out / "beauty", args.embed_device, args.embed_batch
            )
        if args.world is not None:
            if not (args.world / "manifest.json").exists():
                generate_world(cfg.world, cfg.seed, args.world, cfg.preset)
            summary["world"] = compare_on(
                "ad world", args.world, cfg, out / "world", args.embed_device, args.embed_batch
            )
        if args.scale:
            summary["scale"] = scale_run(args.scale, cfg.tokenizer, cfg.seed)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
