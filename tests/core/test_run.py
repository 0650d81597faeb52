"""The Run artifact: self-contained, relocatable, checked on load; earlier layouts converted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpr.core.errors import GprInputError
from gpr.core.run import Run
from gpr.model.registry import load_model
from tests.conftest import run_cli

TINY = ("--preset", "tiny")


def _json(p: object) -> dict:
    out = p.stdout  # type: ignore[attr-defined]
    return json.loads(out[out.index("{") :])


@pytest.fixture(scope="module")
def trained(tiny_world: Path, tiny_sids: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world copy with a GPR run and a cascade run trained on it (under one root)."""
    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(tiny_world, root / "world")
    shutil.copytree(tiny_sids, root / "sids")
    w, t = root / "world", root / "sids"
    p = run_cli(
        "train",
        "--model",
        "gpr",
        "--data",
        str(w),
        "--sids",
        str(t),
        *TINY,
        "--out",
        str(root / "g"),
    )
    assert p.returncode == 0, p.stderr
    p = run_cli("train", "--model", "cascade", "--data", str(w), *TINY, "--out", str(root / "c"))
    assert p.returncode == 0, p.stderr
    return root


def _figures(run: Path, data: Path | None, cwd: Path) -> tuple[dict, dict]:
    extra = ["--data", str(data)] if data is not None else []
    ev = run_cli("eval", "--run", str(run), "--split", "test", *extra, cwd=cwd)
    assert ev.returncode == 0, ev.stderr
    sim = run_cli("simulate", "--policy", str(run), "--data", str(data or run / "nowhere"), cwd=cwd)
    return _json(ev), (_json(sim) if sim.returncode == 0 else {"error": sim.stderr})


def test_a_moved_run_evaluates_on_a_copy_of_its_data(trained: Path, tmp_path: Path) -> None:
    before_ev, before_sim = _figures(trained / "g", trained / "world", trained)
    c_before = _json(
        run_cli("simulate", "--policy", str(trained / "c"), "--data", str(trained / "world"))
    )
    # move the runs and a copy of the data elsewhere, then delete what they were trained from
    shutil.copytree(trained, tmp_path / "copy")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "copy" / "g", moved / "g")
    shutil.move(tmp_path / "copy" / "c", moved / "c")
    data = tmp_path / "copy" / "world"
    shutil.rmtree(tmp_path / "copy" / "sids")
    after_ev, after_sim = _figures(moved / "g", data, tmp_path)
    drop = ("run", "data", "spec", "policy")
    assert {k: v for k, v in after_ev.items() if k not in drop} == {
        k: v for k, v in before_ev.items() if k not in drop
    }
    assert after_sim["rpm"] == before_sim["rpm"] and after_sim["ctcvr"] == before_sim["ctcvr"]
    c_after = _json(run_cli("simulate", "--policy", str(moved / "c"), "--data", str(data)))
    assert c_after["rpm"] == c_before["rpm"]


def test_a_generative_run_loads_without_any_dataset(trained: Path, tmp_path: Path) -> None:
    shutil.copytree(trained / "g", tmp_path / "g")
    run = Run.load(tmp_path / "g")
    run.info["data"] = str(tmp_path / "no-such-dataset")  # nothing to read even if it tried
    model, cat = load_model(run)
    assert cat.trie.items.numel() > 0 and cat.sids.codebook_size == 16
    assert sum(p.numel() for p in model.parameters()) == run.info["parameters"]


def test_a_tampered_weight_file_is_refused(trained: Path, tmp_path: Path) -> None:
    shutil.copytree(trained / "g", tmp_path / "g")
    f = tmp_path / "g" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    p = run_cli("eval", "--run", str(tmp_path / "g"), "--data", str(trained / "world"))
    assert p.returncode == 2 and "does not match its manifest hash" in p.stderr
    assert "Traceback" not in p.stderr


def _earlier_schema(model: dict) -> dict:  # type: ignore[type-arg]
    """A model section as gpr wrote it before the config became components (flat fields)."""
    m = {k: v for k, v in model.items() if k not in ("inputs", "item_head", "hte_features")}
    head = {"weight": 1.0, "alpha": 1.0, "widen": 50, "neighbours": 0, "beta": 10.0}
    flat = {f"item_head_{k}": v for k, v in head.items()}
    return {**m, **flat, "item_head": False, "content_input": False, "item_ids": False,
            "hte_side": False, "hte_session": False}  # fmt: skip


def test_an_earlier_layout_names_the_converter_and_converts(trained: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(trained / "g", old)
    (old / "manifest.json").unlink()
    shutil.rmtree(old / "catalogue")
    info = json.loads((old / "run.json").read_text())
    config = {k: v for k, v in info["config"].items() if k != "runtime"}
    config["model"] = _earlier_schema(config["model"])
    config["train"] = {**config["train"], "threads": None}
    config["serve"] = {"rank_by": "logprob", "bid_weight": 0.0, "hte_weight": 0.0, "beam": None}
    info.update(config=config, model_config=_earlier_schema(info["model_config"]))
    (old / "run.json").write_text(json.dumps(info))  # as the earlier gpr wrote it
    with pytest.raises(GprInputError, match="gpr run convert"):
        Run.load(old)
    p = run_cli("run", "convert", "--run", str(old), "--out", str(tmp_path / "new"))
    assert p.returncode == 0, p.stderr
    ev_new = run_cli("eval", "--run", str(tmp_path / "new"), "--split", "valid")
    ev_ref = run_cli("eval", "--run", str(trained / "g"), "--split", "valid")
    assert _json(ev_new)["ndcg@10"] == _json(ev_ref)["ndcg@10"]


def test_training_reads_the_codebook_from_the_sids(tiny_world: Path, tmp_path: Path) -> None:
    """SIDs made with another codebook than the training preset's: the SIDs' own size is used."""
    tok = tmp_path / "tok32"
    p = run_cli("tokenize", "--data", str(tiny_world), "--out", str(tok), *TINY,
                "--method", "rq_kmeans", "--set", "tokenizer.codebook_size=32")  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = tmp_path / "run"
    p = run_cli("train", "--model", "gpr", "--data", str(tiny_world), "--sids", str(tok), *TINY,
                "--set", "train.epochs=1", "--set", "train.max_eval_requests=50",
                "--out", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert Run.load(out).info["level_sizes"][:3] == [32, 32, 32]
