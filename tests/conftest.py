from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gpr.cascade.simulator import Simulator
from gpr.cascade.train import train_cascade
from gpr.core.config import load_config
from gpr.model.gpr import GPRModel
from gpr.model.prepare import Prepared
from gpr.model.registry import load_run
from gpr.train import mtp
from gpr.world import generate_world

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tests use tiny tensors: extra intra-op threads only add overhead (and spin on busy hosts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "tiny"
    cfg = load_config("tiny")
    generate_world(cfg.world, cfg.seed, out, "tiny")
    return out


@pytest.fixture(scope="session")
def stat_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bigger tiny world for statistical checks (a few seconds)."""
    out = tmp_path_factory.mktemp("world") / "stat"
    cfg = load_config("tiny", overrides=["world.n_users=1500", "world.n_days=5"])
    generate_world(cfg.world, cfg.seed, out, "tiny")
    return out


@pytest.fixture(scope="session")
def tiny_sids(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RQ-Kmeans+ semantic IDs of the tiny world (tiny preset)."""
    from gpr.tokenizer.pipeline import run_tokenize

    tok = tmp_path_factory.mktemp("tok") / "tok"
    run_tokenize(tiny_world, load_config("tiny"), tok)
    return tok


def overfit(model: torch.nn.Module, batch: Any, trie: Any, steps: int = 12) -> list[float]:
    """Train `steps` Adam steps on one batch and return the losses."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = model.loss(batch, trie)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpr.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT
    )


# --- a tiny MTP run and a tiny cascade (the simulator), trained once per session ------------
@pytest.fixture(scope="session")
def runs(
    tiny_world: Path, tiny_sids: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The tiny MTP run and the tiny cascade (the simulator), trained once per test session."""
    root = tmp_path_factory.mktemp("align")
    cfg = load_config("tiny")
    mtp.train(tiny_world, tiny_sids, cfg, root / "mtp", "gpr", progress=False)
    train_cascade(tiny_world, cfg.cascade, 7, root / "cascade")
    return root / "mtp", root / "cascade"


@pytest.fixture(scope="session")
def loaded(runs: tuple[Path, Path]) -> tuple[GPRModel, Prepared]:
    """The tiny MTP run's model (eval mode) and its prepared journeys."""
    model, prep, _ = load_run(runs[0])
    assert isinstance(model, GPRModel)
    return model.eval(), prep


@pytest.fixture(scope="session")
def sim(runs: tuple[Path, Path], tiny_world: Path) -> Simulator:
    return Simulator(runs[1], tiny_world)
