"""RQ-Kmeans, RQ-VAE and RQ-Kmeans+ on a small clustered dataset (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpr.core.config import TokenizerConfig
from gpr.core.errors import GprInputError
from gpr.tokenizer import (
    RQKmeansPlusTokenizer,
    Tokenizer,
    build_tokenizer,
    dedup_index,
    extend_dedup,
    load_tokenizer,
)
from gpr.tokenizer.kmeans import residual_kmeans
from gpr.tokenizer.rq import MLP, ResidualEncoder, ResidualQuantizer, RQAutoencoder

METHODS = ["rq_kmeans", "rq_vae", "rq_kmeans_plus"]
N, D, L, K = 2000, 16, 2, 16


def _cfg(method: str, **kw: object) -> TokenizerConfig:
    base: dict[str, object] = dict(
        method=method,
        levels=L,
        codebook_size=K,
        latent_dim=8,
        hidden_dims=[32],
        epochs=3,
        batch_size=256,
        kmeans_iters=10,
        device="cpu",
    )
    base.update(kw)
    return TokenizerConfig.model_validate(base)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, D)) * 3
    return (centers[rng.integers(0, 40, N)] + rng.normal(size=(N, D))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(data: np.ndarray) -> dict[str, tuple[Tokenizer, dict]]:
    out = {}
    for m in METHODS:
        tok = build_tokenizer(_cfg(m), seed=11)
        out[m] = (tok, tok.fit(data))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_encode_shape_range_and_determinism(method: str, data: np.ndarray, fitted: dict) -> None:
    tok, stats = fitted[method]
    codes = tok.encode(data)
    assert codes.shape == (N, L) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < K
    assert stats["method"] == method and np.isfinite(stats["recon_mse"])
    again = build_tokenizer(_cfg(method), seed=11)
    again.fit(data)
    assert np.array_equal(again.encode(data), codes)
    rec = tok.reconstruct(data[:10])
    assert rec.shape == (10, D) and rec.dtype == np.float32


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method: str, data: np.ndarray, fitted: dict, tmp_path: Path) -> None:
    tok, _ = fitted[method]
    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").exists()
    back = load_tokenizer(tmp_path / "tok")
    assert type(back) is type(tok)
    assert np.array_equal(back.encode(data), tok.encode(data))
    assert np.array_equal(back.reconstruct(data), tok.reconstruct(data))


def test_load_errors(tmp_path: Path, fitted: dict) -> None:
    with pytest.raises(GprInputError):
        load_tokenizer(tmp_path / "missing")
    tok, _ = fitted["rq_kmeans"]
    tok.save(tmp_path / "t")
    with pytest.raises(GprInputError):
        RQKmeansPlusTokenizer.load(tmp_path / "t")  # saved as rq_kmeans
    (tmp_path / "t" / "tokenizer.safetensors").unlink()
    with pytest.raises(GprInputError):
        load_tokenizer(tmp_path / "t")


def test_encode_rejects_bad_input(fitted: dict) -> None:
    tok, _ = fitted["rq_kmeans"]
    with pytest.raises(GprInputError):
        tok.encode(np.ones((3, D + 1), dtype=np.float32))
    bad = np.ones((3, D), dtype=np.float32)
    bad[2, 0] = np.nan
    with pytest.raises(GprInputError) as e:
        tok.encode(bad)
    assert e.value.row == 2
    assert tok.encode(np.zeros((0, D), dtype=np.float32)).shape == (0, L)
    with pytest.raises(GprInputError) as e:
        build_tokenizer(_cfg("rq_vae"), 0).fit(np.ones((K - 1, D)))
    assert e.value.field == "codebook_size"


def test_rq_kmeans_plus_step0_is_rq_kmeans_on_latent(data: np.ndarray) -> None:
    # plus_latent_dim < d: the latent is the PCA projection; its codes are RQ-Kmeans codes on it.
    tok = build_tokenizer(_cfg("rq_kmeans_plus", epochs=0, plus_latent_dim=8), seed=5)
    stats = tok.fit(data)
    z = tok.latent(data)
    _, ref = residual_kmeans(z, L, K, 10, seed=5)
    assert np.array_equal(tok.encode(data), ref)
    assert stats["recon_mse"] == stats["recon_mse_init"]
    # default (latent = input): identity projection, the step-0 model *is* RQ-Kmeans.
    plus = build_tokenizer(_cfg("rq_kmeans_plus", epochs=0), seed=5)
    plus.fit(data)
    base = build_tokenizer(_cfg("rq_kmeans"), seed=5)
    base.fit(data)
    assert np.array_equal(plus.encode(data), base.encode(data))
    assert np.allclose(plus.reconstruct(data), base.reconstruct(data), atol=1e-5)


def test_rq_kmeans_plus_training_does_not_worsen_recon(fitted: dict) -> None:
    _, stats = fitted["rq_kmeans_plus"]
    assert stats["recon_mse"] <= stats["recon_mse_init"]
    assert len(stats["history"]) == 3


def test_straight_through_passes_gradients_to_encoder() -> None:
    torch.manual_seed(0)
    enc = MLP(D, [32], 8)
    model = RQAutoencoder(enc, ResidualQuantizer(L, K, 8), MLP(8, [32], D), beta=0.25)
    x = torch.randn(64, D)
    out = model(x)
    out["recon"].backward()
    for p in enc.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.quantizer.codebooks.grad is None  # codes learn from the codebook loss only
    model.zero_grad()
    model(x)["codebook"].backward()
    cb_grad = model.quantizer.codebooks.grad
    assert cb_grad is not None and cb_grad.abs().sum() > 0
    # residual encoder (RQ-Kmeans+): zero-init last layer still receives a gradient
    renc = ResidualEncoder(torch.eye(D, 8), [32])
    z_q, _, _, _ = ResidualQuantizer(L, K, 8)(renc(x))
    ((z_q - 1.0) ** 2).mean().backward()
    last = renc.mlp.net[-1]
    assert isinstance(last, torch.nn.Linear) and last.weight.grad is not None
    assert last.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["rq_kmeans", "rq_kmeans_plus"])
def test_new_items_get_unique_paths(method: str, data: np.ndarray) -> None:
    old_x, new_x = data[:1500], data[1500:]
    tok = build_tokenizer(_cfg(method, epochs=1), seed=2)
    tok.fit(old_x)
    old_codes = tok.encode(old_x)
    old_dedup = dedup_index(old_codes)
    new_codes = tok.encode(new_x)
    new_dedup = extend_dedup(old_codes, old_dedup, new_codes)
    assert np.array_equal(tok.encode(old_x), old_codes)  # existing items unchanged
    assert np.array_equal(dedup_index(old_codes), old_dedup)
    full = np.concatenate(
        [
            np.concatenate([old_codes, old_dedup[:, None]], axis=1),
            np.concatenate([new_codes, new_dedup[:, None]], axis=1),
        ]
    )
    assert len(np.unique(full, axis=0)) == len(data)
