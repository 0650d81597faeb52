"""Torch modules: residual quantizer with straight-through gradients, MLP encoders/decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpr.tokenizer.kmeans import nearest


class MLP(nn.Module):
    """Linear -> ReLU -> ... -> Linear. `zero_last` zero-initialises the output layer."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, zero_last: bool = False):
        super().__init__()
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        last = nn.Linear(dims[-1], out_dim)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualEncoder(nn.Module):
    """z = x @ proj + MLP(x), the MLP's last layer zero-initialised (so z = x @ proj at step 0).

    `proj` (d, latent) is a fixed buffer: identity when latent == d, PCA otherwise (see methods).
    """

    proj: torch.Tensor

    def __init__(self, proj: torch.Tensor, hidden: list[int]):
        super().__init__()
        self.register_buffer("proj", proj.clone().float())
        self.mlp = MLP(proj.shape[0], hidden, proj.shape[1], zero_last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj + self.mlp(x)


class ResidualDecoder(nn.Module):
    """x_hat = z @ proj.T + MLP(z), zero-init last layer: at step 0 the inverse projection."""

    proj: torch.Tensor

    def __init__(self, proj: torch.Tensor, hidden: list[int]):
        super().__init__()
        self.register_buffer("proj", proj.clone().float())
        self.mlp = MLP(proj.shape[1], hidden, proj.shape[0], zero_last=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.proj.T + self.mlp(z)


class ResidualQuantizer(nn.Module):
    """L codebooks of K codes in d dims; each level quantises the residual of the previous ones."""

    def __init__(self, levels: int, size: int, dim: int, init: torch.Tensor | None = None):
        super().__init__()
        if init is None:  # the RQ-VAE baseline: small random codes (VQ-VAE's uniform(-1/K, 1/K))
            init = torch.empty(levels, size, dim).uniform_(-1.0 / size, 1.0 / size)
        if tuple(init.shape) != (levels, size, dim):
            raise ValueError(f"codebook init shape {tuple(init.shape)} != {(levels, size, dim)}")
        self.codebooks = nn.Parameter(init.clone().float())

    def forward(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (z_q with straight-through gradient, codes (n, L), codebook loss, commit loss).

        Per level: codebook loss ||sg(r) - e||^2, commitment loss ||r - sg(e)||^2 (means over the
        batch and dims, summed over levels); the next residual is r - sg(e).
        """
        r = z
        q = torch.zeros_like(z)
        codes = []
        cb_loss = z.new_zeros(())
        cm_loss = z.new_zeros(())
        for cb in self.codebooks:
            idx, _ = nearest(r.detach(), cb.detach())
            e = cb[idx]
            cb_loss = cb_loss + F.mse_loss(e, r.detach())
            cm_loss = cm_loss + F.mse_loss(r, e.detach())
            q = q + e
            r = r - e.detach()
            codes.append(idx)
        z_q = z + (q - z).detach()  # straight-through: forward q, gradient to z as identity
        # the codebook gradient comes from cb_loss only (q enters z_q detached)
        return z_q, torch.stack(codes, dim=1), cb_loss, cm_loss

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (n, L) int64 by nearest code per level on the residual."""
        r = z
        codes = []
        for cb in self.codebooks:
            idx, _ = nearest(r, cb)
            r = r - cb[idx]
            codes.append(idx)
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the chosen codes of every level, (n, d)."""
        levels = torch.arange(codes.shape[1], device=codes.device)
        return self.codebooks[levels[None, :], codes].sum(dim=1)


class RQAutoencoder(nn.Module):
    """encoder -> residual quantizer -> decoder; loss = MSE(x_hat, x) + codebook + beta * commit."""

    def __init__(
        self, encoder: nn.Module, quantizer: ResidualQuantizer, decoder: nn.Module, beta: float
    ):
        super().__init__()
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder
        self.beta = beta

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        z_q, codes, cb, cm = self.quantizer(z)
        x_hat = self.decoder(z_q)
        recon = F.mse_loss(x_hat, x)
        loss = recon + cb + self.beta * cm
        return {"loss": loss, "recon": recon, "codebook": cb, "commit": cm, "codes": codes}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        return self.decoder(self.quantizer.decode(self.quantizer.encode(z)))
