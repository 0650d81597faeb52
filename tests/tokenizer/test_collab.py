"""Collaborative item vectors: co-bought items end up close; valid/test events never count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpr.core.config import load_config
from gpr.core.io import content_hash
from gpr.tokenizer.collab import ppmi_svd, with_collab
from gpr.tokenizer.pipeline import run_tokenize


def test_co_occurring_items_are_close_and_loners_are_zero() -> None:
    # users 0-19 buy within {0,1,2}, users 20-39 within {3,4,5}; item 6 is never bought
    rng = np.random.default_rng(0)
    user, item = [], []
    for u in range(40):
        pool = [0, 1, 2] if u < 20 else [3, 4, 5]
        seq = rng.choice(pool, size=6)
        user += [u] * 6
        item += seq.tolist()
    vec = ppmi_svd(np.array(user), np.array(item), 7, dim=2, window=2, seed=0)
    assert vec.shape == (7, 2)
    np.testing.assert_allclose(np.linalg.norm(vec[:6], axis=1), 1.0, atol=1e-5)
    assert (vec[6] == 0).all()
    sim = vec[:6] @ vec[:6].T
    within = [sim[a, b] for a in range(6) for b in range(6) if a != b and (a < 3) == (b < 3)]
    across = [sim[a, b] for a in range(3) for b in range(3, 6)]
    assert min(within) > max(across) + 0.5


def test_pairs_never_cross_users() -> None:
    # each user has a single item: no pairs at all, so every vector is zero
    vec = ppmi_svd(np.arange(5), np.arange(5), 5, dim=2, window=3, seed=0)
    assert (vec == 0).all()


def _shuffle_held_out(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    ev = pq.read_table(dst / "events.parquet")
    held = pc.not_equal(ev.column("split"), "train").to_numpy(zero_copy_only=False)
    items = ev.column("item_id").to_numpy().copy()
    rng = np.random.default_rng(1)
    items[held] = rng.permutation(items[held])
    ev = ev.set_column(ev.schema.get_field_index("item_id"), "item_id", pa.array(items))
    pq.write_table(ev, dst / "events.parquet")
    manifest = json.loads((dst / "manifest.json").read_text())
    files = [dst / f"{n}.parquet" for n in ("users", "items", "events")]
    manifest["content_hash"] = content_hash(files)  # a valid dataset, written anew
    (dst / "manifest.json").write_text(json.dumps(manifest))


def test_held_out_events_do_not_change_the_vectors(tiny_world: Path, tmp_path: Path) -> None:
    other = tmp_path / "shuffled"
    _shuffle_held_out(tiny_world, other)
    ids = pq.read_table(tiny_world / "items.parquet").column("item_id").to_numpy()
    content = np.ones((len(ids), 3), dtype=np.float32)
    a = with_collab(tiny_world, ids, content, dim=8, weight=0.5, window=3, seed=0)
    b = with_collab(other, ids, content, dim=8, weight=0.5, window=3, seed=0)
    assert a.shape == (len(ids), 11)
    np.testing.assert_array_equal(a, b)
    assert (a[:, :3] == 1).all()
    np.testing.assert_allclose(np.abs(a[:, 3:]).max(), 0.5, rtol=0.5)


def test_tokenize_with_collab_records_it(tiny_world: Path, tmp_path: Path) -> None:
    cfg = load_config("tiny", overrides=["tokenizer.collab_dim=8"])
    m = run_tokenize(tiny_world, cfg, tmp_path / "tok")
    assert m["collab_dim"] == 8 and m["n_items"] > 0
