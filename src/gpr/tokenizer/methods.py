"""Three semantic-ID tokenizers behind one interface: RQ-Kmeans, RQ-VAE and RQ-Kmeans+.

All three standardise the input per dimension ((x - mean) / std, statistics from the training
set, recorded in tokenizer.json and applied identically at encode time) and quantise with L
residual codebooks of K codes. `reconstruct` returns vectors in the original input space.

Saved as `tokenizer.json` (method, config, seed, input dim, normalisation) plus
`tokenizer.safetensors` (weights). No pickle.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from gpr.core.config import TokenizerConfig
from gpr.core.errors import GprInputError
from gpr.core.io import read_json, read_tensors, write_json
from gpr.tokenizer.dedup import validate_embeddings
from gpr.tokenizer.kmeans import residual_kmeans
from gpr.tokenizer.rq import (
    MLP,
    ResidualDecoder,
    ResidualEncoder,
    ResidualQuantizer,
    RQAutoencoder,
)

FORMAT_VERSION = 1
JSON_NAME = "tokenizer.json"
WEIGHTS_NAME = "tokenizer.safetensors"
_CHUNK = 65536  # rows per encode/reconstruct block


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; any other torch device string is taken as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GprInputError(f"unknown device '{name}'", field="tokenizer.device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GprInputError("CUDA requested but not available", field="tokenizer.device")
    return dev


class Tokenizer(ABC):
    """Maps embeddings (n, d) to semantic-ID codes (n, L) in [0, K)."""

    method: ClassVar[str]

    def __init__(self, cfg: TokenizerConfig, seed: int = 0) -> None:
        self.cfg = cfg.model_copy(deep=True)
        self.seed = int(seed)
        self.input_dim: int | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.device = resolve_device(cfg.device)

    @property
    def levels(self) -> int:
        return self.cfg.levels

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    # ---- interface -----------------------------------------------------------------------------

    @abstractmethod
    def fit(self, x: np.ndarray) -> dict[str, Any]:
        """Train on embeddings (n, d); returns training statistics (JSON-serialisable)."""

    @abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes (n, L) int64 in [0, K)."""

    @abstractmethod
    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Decoded quantised vectors (n, d) float32 in input space (for recon_mse)."""

    @abstractmethod
    def latent(self, x: np.ndarray) -> np.ndarray:
        """The vectors the codebooks quantise (n, latent) float32."""

    @abstractmethod
    def codebooks(self) -> np.ndarray:
        """Codebooks (L, K, latent) float32."""

    @abstractmethod
    def _state(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _set_state(self, state: dict[str, torch.Tensor]) -> None: ...

    # ---- shared --------------------------------------------------------------------------------

    def _prepare_fit(self, x: np.ndarray) -> np.ndarray:
        """Validate, record normalisation stats, seed every RNG; returns standardised float32."""
        arr = validate_embeddings(x, self.codebook_size)
        self.input_dim = arr.shape[1]
        mean = arr.mean(axis=0, dtype=np.float64)
        std = np.sqrt(np.square(arr - mean.astype(np.float32)).mean(axis=0, dtype=np.float64))
        self.mean = mean.astype(np.float32)
        self.std = np.where(std > 1e-8, std, 1.0).astype(np.float32)
        torch.manual_seed(self.seed)
        return self._standardise(arr)

    def _check(self, x: np.ndarray) -> np.ndarray:
        if self.input_dim is None:
            raise RuntimeError("tokenizer is not fitted")
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise GprInputError(
                f"expected embeddings of shape (n, {self.input_dim}), got {arr.shape}",
                field="embedding",
            )
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise GprInputError("embedding holds NaN or inf", row=row, field="embedding")
        return self._standardise(arr)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.std is not None
        return np.ascontiguousarray((np.asarray(x, np.float32) - self.mean) / self.std, np.float32)

    def _unstandardise(self, x: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.std is not None
        return (x * self.std + self.mean).astype(np.float32)

    def recon_mse(self, x: np.ndarray) -> float:
        """Mean squared error of `reconstruct(x)` against x, in input space."""
        diff = self.reconstruct(x).astype(np.float64) - np.asarray(x, np.float64)
        return float(np.mean(diff * diff))

    def _meta(self) -> dict[str, Any]:
        assert self.mean is not None and self.std is not None
        return {
            "format": "gpr-tokenizer",
            "version": FORMAT_VERSION,
            "method": self.method,
            "seed": self.seed,
            "input_dim": self.input_dim,
            "config": self.cfg.model_dump(),
            "normalisation": {
                "kind": "standardise",
                "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std],
            },
            "weights": WEIGHTS_NAME,
        }

    def save(self, dir: str | Path) -> None:
        """Write tokenizer.json and tokenizer.safetensors into `dir` (wrap in io.atomic_dir)."""
        if self.input_dim is None:
            raise RuntimeError("tokenizer is not fitted")
        out = Path(dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self._state().items()}
        tmp = out / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"method": self.method})
        tmp.replace(out / WEIGHTS_NAME)
        write_json(out / JSON_NAME, self._meta())

    @classmethod
    def load(cls, dir: str | Path) -> Tokenizer:
        """Load a saved tokenizer; the method is read from tokenizer.json."""
        path = Path(dir) / JSON_NAME
        meta = read_json(path)
        if meta.get("format") != "gpr-tokenizer" or meta.get("version") != FORMAT_VERSION:
            raise GprInputError("not a gpr tokenizer (format/version)", file=path, field="format")
        method = meta.get("method")
        if method not in METHODS:
            raise GprInputError(f"unknown method {method!r}", file=path, field="method")
        klass = METHODS[method]
        if not issubclass(klass, cls):
            raise GprInputError(f"saved method {method!r} is not a {cls.__name__}", file=path)
        try:
            cfg = TokenizerConfig.model_validate(meta["config"])
            norm = meta["normalisation"]
            input_dim = int(meta["input_dim"])
            mean = np.asarray(norm["mean"], dtype=np.float32)
            std = np.asarray(norm["std"], dtype=np.float32)
        except (KeyError, TypeError, ValueError, ValidationError) as e:
            raise GprInputError(f"malformed tokenizer.json: {e}", file=path) from None
        if (
            norm.get("kind") != "standardise"
            or mean.shape != (input_dim,)
            or std.shape != mean.shape
        ):
            raise GprInputError("bad normalisation block", file=path, field="normalisation")
        tok = klass(cfg, int(meta.get("seed", 0)))
        tok.input_dim, tok.mean, tok.std = input_dim, mean, std
        wpath = Path(dir) / WEIGHTS_NAME
        if not wpath.exists():
            raise GprInputError("weights file not found", file=wpath)
        try:
            tok._set_state(read_tensors(wpath))
        except (KeyError, RuntimeError, ValueError) as e:
            raise GprInputError(f"weights do not match the config: {e}", file=wpath) from None
        return tok


class RQKmeansTokenizer(Tokenizer):
    """RQ-Kmeans: faiss k-means on residuals, level by level, directly on the standardised input."""

    method = "rq_kmeans"

    def __init__(self, cfg: TokenizerConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.quantizer: ResidualQuantizer | None = None

    def fit(self, x: np.ndarray) -> dict[str, Any]:
        t0 = time.time()
        xs = self._prepare_fit(x)
        cfg = self.cfg
        cents, _ = residual_kmeans(
            xs, cfg.levels, cfg.codebook_size, cfg.kmeans_iters, self.seed, cfg.balanced
        )
        self.quantizer = ResidualQuantizer(
            cfg.levels, cfg.codebook_size, xs.shape[1], torch.from_numpy(np.stack(cents))
        ).to(self.device)
        return {
            "method": self.method,
            "n_items": int(xs.shape[0]),
            "input_dim": int(xs.shape[1]),
            "recon_mse": self.recon_mse(x),
            "seconds": time.time() - t0,
        }

    def _q(self) -> ResidualQuantizer:
        if self.quantizer is None:
            raise RuntimeError("tokenizer is not fitted")
        return self.quantizer

    def encode(self, x: np.ndarray) -> np.ndarray:
        xs = self._check(x)
        q = self._q()
        return _batched(xs, lambda t: q.encode(t), self.device).astype(np.int64)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        xs = self._check(x)
        q = self._q()
        return self._unstandardise(_batched(xs, lambda t: q.decode(q.encode(t)), self.device))

    def latent(self, x: np.ndarray) -> np.ndarray:
        return self._check(x)

    def codebooks(self) -> np.ndarray:
        return self._q().codebooks.detach().cpu().numpy().copy()

    def _state(self) -> dict[str, torch.Tensor]:
        return {"codebooks": self._q().codebooks.detach()}

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        assert self.input_dim is not None
        cfg = self.cfg
        self.quantizer = ResidualQuantizer(
            cfg.levels, cfg.codebook_size, self.input_dim, state["codebooks"]
        ).to(self.device)


class _AutoencoderTokenizer(Tokenizer):
    """Shared training/encoding for the RQ-VAE family (encoder -> RQ -> decoder)."""

    def __init__(self, cfg: TokenizerConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.model: RQAutoencoder | None = None

    @abstractmethod
    def _build(self, xs: np.ndarray | None) -> RQAutoencoder:
        """The model; `xs` is the standardised training set (None when loading weights)."""

    def _m(self) -> RQAutoencoder:
        if self.model is None:
            raise RuntimeError("tokenizer is not fitted")
        return self.model

    def fit(self, x: np.ndarray) -> dict[str, Any]:
        t0 = time.time()
        xs = self._prepare_fit(x)
        cfg = self.cfg
        self.model = self._build(xs).to(self.device)
        model = self.model
        init_mse = self.recon_mse(x)
        xt = torch.from_numpy(xs).to(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        history: list[dict[str, float]] = []
        n = xt.shape[0]
        for _ in range(cfg.epochs):
            model.train()
            perm = torch.randperm(n, generator=gen).to(self.device)
            sums = torch.zeros(4, device=self.device)
            steps = 0
            for s in range(0, n, cfg.batch_size):
                out = model(xt[perm[s : s + cfg.batch_size]])
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
                parts = [out[k].detach() for k in ("loss", "recon", "codebook", "commit")]
                sums += torch.stack(parts)
                steps += 1
            avg = (sums / steps).tolist()
            history.append(dict(zip(("loss", "recon", "codebook", "commit"), avg, strict=True)))
        model.eval()
        return {
            "method": self.method,
            "n_items": int(n),
            "input_dim": int(xs.shape[1]),
            "epochs": cfg.epochs,
            "recon_mse_init": init_mse,
            "recon_mse": self.recon_mse(x),
            "history": history,
            "seconds": time.time() - t0,
        }

    def encode(self, x: np.ndarray) -> np.ndarray:
        xs = self._check(x)
        m = self._m().eval()
        return _batched(xs, m.encode, self.device).astype(np.int64)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        xs = self._check(x)
        m = self._m().eval()
        return self._unstandardise(_batched(xs, m.reconstruct, self.device))

    def latent(self, x: np.ndarray) -> np.ndarray:
        xs = self._check(x)
        m = self._m().eval()
        return _batched(xs, lambda t: m.encoder(t), self.device)

    def codebooks(self) -> np.ndarray:
        return self._m().quantizer.codebooks.detach().cpu().numpy().copy()

    def _state(self) -> dict[str, torch.Tensor]:
        return dict(self._m().state_dict())

    def _set_state(self, state: dict[str, torch.Tensor]) -> None:
        model = self._build(None)
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()


class RQVAETokenizer(_AutoencoderTokenizer):
    """RQ-VAE baseline: MLP encoder, randomly initialised codebooks, MLP decoder."""

    method = "rq_vae"

    def _build(self, xs: np.ndarray | None) -> RQAutoencoder:
        assert self.input_dim is not None
        cfg, d = self.cfg, self.input_dim
        return RQAutoencoder(
            MLP(d, cfg.hidden_dims, cfg.latent_dim),
            ResidualQuantizer(cfg.levels, cfg.codebook_size, cfg.latent_dim),
            MLP(cfg.latent_dim, cfg.hidden_dims[::-1], d),
            cfg.beta,
        )


class RQKmeansPlusTokenizer(_AutoencoderTokenizer):
    """RQ-Kmeans+: residual encoder z = x P + MLP(x) (zero-init last layer), codebooks warm-started
    from RQ-Kmeans on z at step 0, then trained with the RQ-VAE loss.

    By default the latent is the input space (P = I, the paper's z = x + Enc(x));
    `plus_latent_dim` < d gives a smaller latent. P (d, latent) is fixed, so z = x P at step 0:
    the identity when latent_dim == d; the top-`latent_dim` PCA directions of the standardised
    training data when latent_dim < d; the identity padded with zero columns when latent_dim > d.
    The decoder mirrors it, x_hat = z_q P^T + MLP(z_q) with a zero-init last layer, so the step-0
    model is exactly RQ-Kmeans on the projected input and training can only start from there.
    """

    method = "rq_kmeans_plus"

    def _build(self, xs: np.ndarray | None) -> RQAutoencoder:
        assert self.input_dim is not None
        cfg, d = self.cfg, self.input_dim
        ld = cfg.plus_latent_dim or d  # default: the input space, z = x + Enc(x)
        proj = torch.zeros(d, ld) if xs is None else torch.from_numpy(projection(xs, ld))
        enc = ResidualEncoder(proj, cfg.hidden_dims)
        dec = ResidualDecoder(proj, cfg.hidden_dims[::-1])
        init = torch.zeros(cfg.levels, cfg.codebook_size, ld)
        if xs is not None:
            z0 = _batched(xs, enc, torch.device("cpu"))  # = xs @ P exactly (zero-init MLP)
            cents, _ = residual_kmeans(
                z0, cfg.levels, cfg.codebook_size, cfg.kmeans_iters, self.seed, cfg.balanced
            )
            init = torch.from_numpy(np.stack(cents))
        quant = ResidualQuantizer(cfg.levels, cfg.codebook_size, ld, init)
        return RQAutoencoder(enc, quant, dec, cfg.beta)


def projection(xs: np.ndarray, latent_dim: int) -> np.ndarray:
    """Fixed input projection (d, latent_dim) float32: identity, PCA (latent < d) or zero-pad."""
    d = xs.shape[1]
    eye = np.eye(d, max(d, latent_dim), dtype=np.float32)
    if latent_dim >= d:
        return eye
    mean = xs.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d))
    for s in range(0, xs.shape[0], _CHUNK):  # float64 covariance without a float64 copy of xs
        b = xs[s : s + _CHUNK].astype(np.float64) - mean
        cov += b.T @ b
    cov /= max(1, xs.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:latent_dim]]
    sign = np.sign(top[np.abs(top).argmax(axis=0), np.arange(latent_dim)])
    return np.ascontiguousarray(top * np.where(sign == 0, 1.0, sign), dtype=np.float32)


def _batched(xs: np.ndarray, fn: Any, device: torch.device) -> np.ndarray:
    """Apply a tensor function to row blocks of xs and concatenate the results on the CPU."""
    outs = []
    with torch.no_grad():
        for s in range(0, xs.shape[0], _CHUNK):
            outs.append(fn(torch.from_numpy(xs[s : s + _CHUNK]).to(device)).cpu())
    if not outs:
        probe = fn(torch.zeros(1, xs.shape[1], device=device)).cpu()
        return np.zeros((0, *probe.shape[1:]), dtype=probe.numpy().dtype)
    return torch.cat(outs).numpy()


METHODS: dict[str, type[Tokenizer]] = {
    "rq_kmeans": RQKmeansTokenizer,
    "rq_vae": RQVAETokenizer,
    "rq_kmeans_plus": RQKmeansPlusTokenizer,
}


def build_tokenizer(cfg: TokenizerConfig, seed: int) -> Tokenizer:
    """An unfitted tokenizer of cfg.method."""
    return METHODS[cfg.method](cfg, seed)


def load_tokenizer(dir: str | Path) -> Tokenizer:
    """Load any saved tokenizer from a directory holding tokenizer.json + tokenizer.safetensors."""
    return Tokenizer.load(dir)
