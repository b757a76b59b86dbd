"""The diffusion prior: a CLIP text embedding -> a plausible CLIP image embedding (unCLIP §2.2).

A small causal transformer reads [text embedding, timestep, noised image embedding, query]
and predicts the clean image embedding directly (MSE), as in Ramesh et al. 2022. The text
is dropped 10 % of the time in training so that guidance works at sampling, and best-of-n
sampling keeps the candidate most similar to the text embedding.
Shape legend: B batch, E embedding width, M transformer width, N candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints
from minidalle.diffusion import ddim_sample, make_schedule, q_sample
from minidalle.transformer import Block
from minidalle.unet import timestep_embedding


@dataclass(frozen=True)
class PriorConfig:
    embed_dim: int = 64
    width: int = 128
    layers: int = 4
    heads: int = 4
    schedule: str = "cosine"
    T: int = 1000
    drop_text: float = 0.1
    steps: int = 50  # default DDIM steps
    best_of: int = 2  # default candidates per prompt (unCLIP samples 2; more costs variety, notebook 05)

    @classmethod
    def tiny(cls) -> "PriorConfig":
        return cls(embed_dim=16, width=32, layers=1, heads=2, T=100, steps=5)


class DiffusionPrior(nn.Module):
    """(noised image embedding z_t, t, text embedding) -> predicted clean image embedding."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config
        self.text_in, self.image_in = nn.Linear(c.embed_dim, c.width), nn.Linear(c.embed_dim, c.width)
        self.time_in = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.query = nn.Parameter(0.02 * torch.randn(c.width))
        self.null_text = nn.Parameter(torch.zeros(c.embed_dim))  # "no prompt", for guidance
        self.position = nn.Parameter(0.02 * torch.randn(4, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads) for _ in range(c.layers))
        self.norm, self.out = nn.LayerNorm(c.width), nn.Linear(c.width, c.embed_dim)
        # Embeddings are standardized so that each dimension has variance ~1 (set from data).
        self.register_buffer("mean", torch.zeros(c.embed_dim))
        self.register_buffer("std", torch.ones(()))
        self.schedule = make_schedule(c.schedule, c.T)

    @property
    def device(self) -> torch.device:
        return self.query.device

    def set_statistics(self, image_embeddings: torch.Tensor) -> None:
        """Standardize with the mean vector and the per-dimension std of real image embeddings (B, E)."""
        self.mean.copy_(image_embeddings.mean(dim=0))
        self.std.copy_((image_embeddings - self.mean).std(dim=0).mean())

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """z_t (B, E) standardized, t (B,), text (B, E) unit-norm -> predicted clean z_0 (B, E)."""
        B = z_t.shape[0]
        tokens = torch.stack([self.text_in(text * self.config.embed_dim**0.5),
                              self.time_in(timestep_embedding(t, self.config.width)),
                              self.image_in(z_t), self.query.expand(B, -1)], dim=1)  # (B, 4, M)
        x = tokens + self.position
        for block in self.blocks:
            x = block(x, causal=True)  # the query (last) reads everything before it
        return self.out(self.norm(x[:, -1]))  # (B, E)

    def loss(self, text: torch.Tensor, image: torch.Tensor, generator: torch.Generator | None = None):
        """text, image: unit-norm CLIP embeddings (B, E) -> MSE on the clean embedding."""
        B = image.shape[0]
        z0 = (image.to(self.device) - self.mean) / self.std  # (B, E) standardized
        t = torch.randint(0, self.config.T, (B,), device=self.device, generator=generator)
        noise = torch.randn(z0.shape, device=self.device, generator=generator)
        drop = torch.rand(B, device=self.device, generator=generator) < self.config.drop_text
        text = torch.where(drop[:, None], self.null_text.expand(B, -1), text.to(self.device))
        return F.mse_loss(self(q_sample(z0, t, noise, self.schedule), t, text), z0)

    @torch.no_grad()
    def sample(self, text: torch.Tensor, seed: int | torch.Generator = 0, best_of: int | None = None,
               guidance: float = 1.0, steps: int | None = None) -> torch.Tensor:
        """text (B, E) unit-norm -> image embeddings (B, E) unit-norm.

        Draws best_of candidates per text by DDIM and keeps the one whose cosine with the
        text embedding is highest (unCLIP §2.2).
        """
        E = self.config.embed_dim
        if not torch.is_tensor(text) or text.dim() != 2 or text.shape[1] != E:
            raise ValueError(f"expected text embeddings of shape (B, {E}), got "
                             f"{tuple(text.shape) if torch.is_tensor(text) else type(text).__name__}")
        best_of = self.config.best_of if best_of is None else best_of
        if best_of < 1:
            raise ValueError(f"best_of must be >= 1, got {best_of}")
        steps = self.config.steps if steps is None else steps
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator(self.device).manual_seed(seed)
        B = text.shape[0]
        text = text.to(self.device, torch.float32)
        repeated = text.repeat_interleave(best_of, dim=0)  # (B*N, E)
        null = self.null_text.expand_as(repeated)

        def model_fn(z_t, t):
            if guidance == 1.0:
                return self(z_t, t, repeated)
            cond, uncond = self(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([repeated, null])).chunk(2)
            return uncond + guidance * (cond - uncond)

        z0 = ddim_sample(model_fn, (B * best_of, E), self.schedule, steps, generator, prediction="x0")
        candidates = F.normalize(z0 * self.std + self.mean, dim=-1).view(B, best_of, E)  # (B, N, E)
        scores = (candidates * text[:, None]).sum(dim=-1)  # (B, N) cosine with the text
        return candidates[torch.arange(B, device=self.device), scores.argmax(dim=1)]  # (B, E)


def build(config: PriorConfig) -> DiffusionPrior:
    return DiffusionPrior(config)


def save_prior(model: DiffusionPrior, path, metrics: dict | None = None, step: int | None = None):
    return checkpoints.save(path, "prior", model.config, model.state_dict(), metrics, step)


def load_prior(path=None, device: str | torch.device = "cpu") -> DiffusionPrior:
    """The shipped prior (data/checkpoints/prior), or one saved at `path`, in eval mode."""
    model, meta = checkpoints.load_module(path or "prior", "prior", PriorConfig, build)
    model.metrics = meta.get("metrics", {})
    return model.to(device)
