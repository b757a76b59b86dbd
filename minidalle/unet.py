"""A small U-Net for 32x32 images, conditioned on a timestep and a CLIP image embedding.

Conditioning the unCLIP way (Ramesh et al. 2022, §2.1): the embedding is projected and added
to the timestep embedding, and projected into a few extra tokens that the attention layers
attend to. Shape legend: B batch, C channels, S side, E CLIP embedding width, K context tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minidalle.attention import MultiHeadAttention


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32
    patch: int = 2  # a 2x2 patch stem: the U-Net runs at 16x16, 8x8, 4x4 (cheap on a CPU)
    width: int = 48
    mults: tuple = (1, 2, 2)
    blocks: int = 1  # residual blocks per resolution
    attention_below: int = 8  # self-attention (with context tokens) at resolutions <= this
    heads: int = 4
    embed_dim: int = 64  # CLIP embedding width
    context_tokens: int = 4
    dropout: float = 0.0
    # Standardize the embedding with the training embeddings' per-dimension mean and std (buffers the
    # trainer fills) before projecting it: CLIP embeddings are unit vectors whose numbers differ from
    # scene to scene by about a tenth (notebook 06, section 1b), so a fresh linear projection of the raw
    # embedding moves about ten times less between scenes than one of the standardized embedding.
    standardize: bool = True

    ADDED_FIELDS = {"standardize": False}  # checkpoints saved before it was added load with False

    @classmethod
    def tiny(cls) -> "UNetConfig":
        return cls(width=16, mults=(1, 2), heads=2, embed_dim=16, context_tokens=2)

    def __post_init__(self):
        if self.image_size % (self.patch * 2 ** (len(self.mults) - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by patch * 2^(levels-1)")
        if self.width % 8:
            raise ValueError(f"width {self.width} must be a multiple of 8 (GroupNorm groups)")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) (Vaswani et al. 2017, §3.5; as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the conditioning vector added in between, residual skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, c_in), nn.GroupNorm(8, c_out)
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)  # scale and shift (FiLM), as improved-diffusion
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, S, S), emb (B, emb_dim) -> (B, C_out, S, S)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over pixels whose keys/values also include the K context tokens."""

    def __init__(self, channels: int, heads: int, context_width: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.context = nn.Linear(context_width, channels) if context_width != channels else nn.Identity()
        self.attn = MultiHeadAttention(channels, heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S), context (B, K, C_context) -> (B, C, S, S)."""
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, S*S, C)
        keys = torch.cat([tokens, self.context(context)], dim=1)  # (B, S*S + K, C)
        attended = self.attn(tokens, context=keys)  # (B, S*S, C)
        return x + attended.transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """(x_t (B, 3, S, S), t (B,), embedding (B, E) or None) -> prediction (B, 3, S, S)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        emb_dim = 4 * c.width
        self.time_mlp = nn.Sequential(nn.Linear(c.width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(c.embed_dim, emb_dim)
        self.null_embedding = nn.Parameter(torch.zeros(c.embed_dim))  # "no condition", for guidance
        if c.standardize:  # identity until set_embedding_stats; saved with the weights
            self.register_buffer("embed_mean", torch.zeros(c.embed_dim))
            self.register_buffer("embed_std", torch.ones(c.embed_dim))
        self.attn_width = attn_width = c.width * c.mults[-1]
        self.context_proj = nn.Linear(c.embed_dim, c.context_tokens * attn_width)
        self.stem = nn.Conv2d(3, c.width, c.patch, stride=c.patch)  # (B, C, S/p, S/p)

        widths = [c.width * m for m in c.mults]
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        side, channels, skips = c.image_size // c.patch, c.width, [c.width]
        for level, w in enumerate(widths):
            for _ in range(c.blocks):
                self.down.append(self._level_block(channels, w, emb_dim, side))
                channels = w
                skips.append(w)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
                side //= 2
                skips.append(w)
        self.mid = nn.ModuleList([ResBlock(channels, channels, emb_dim, c.dropout),
                                  AttentionBlock(channels, c.heads, attn_width),
                                  ResBlock(channels, channels, emb_dim, c.dropout)])
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(c.blocks + 1):
                self.up.append(self._level_block(channels + skips.pop(), w, emb_dim, side))
                channels = w
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                side *= 2
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(),
                                 nn.Conv2d(channels, 3 * c.patch**2, 3, padding=1), nn.PixelShuffle(c.patch))

    @torch.no_grad()
    def set_embedding_stats(self, embeddings: torch.Tensor) -> None:
        """Per-dimension mean and std of training embeddings (N, E), for config.standardize."""
        if not self.config.standardize:
            raise ValueError("set_embedding_stats needs UNetConfig(standardize=True)")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.config.embed_dim or len(embeddings) < 2:
            raise ValueError(f"expected at least 2 embeddings of shape (N, {self.config.embed_dim}), "
                             f"got {tuple(embeddings.shape)}")
        self.embed_mean.copy_(embeddings.mean(0))
        self.embed_std.copy_(embeddings.std(0).clamp(min=1e-4))
        self.null_embedding.copy_(self.embed_mean)  # "no condition" starts at the standardized origin

    def context_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        """The (standardized) embedding (B, E) -> the K context tokens (B, K, C) every attention block
        attends to besides the pixels (unCLIP §2.1: "four extra tokens of context")."""
        return self.context_proj(embedding).view(len(embedding), self.config.context_tokens, self.attn_width)

    def _level_block(self, c_in: int, c_out: int, emb_dim: int, side: int) -> nn.ModuleList:
        blocks = [ResBlock(c_in, c_out, emb_dim, self.config.dropout)]
        if side <= self.config.attention_below:
            blocks.append(AttentionBlock(c_out, self.config.heads, self.attn_width))
        return nn.ModuleList(blocks)

    def _run(self, blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, context) if isinstance(block, AttentionBlock) else block(h, emb)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        B = x.shape[0]
        if embedding is None:
            embedding = self.null_embedding.expand(B, -1)
        if self.config.standardize:  # the null embedding too: it is learned in the standardized space
            embedding = (embedding - self.embed_mean) / self.embed_std  # (B, E)
        emb = self.time_mlp(timestep_embedding(t, self.config.width)) + self.cond_proj(embedding)  # (B, 4C)
        context = self.context_tokens(embedding)  # (B, K, C)
        h = self.stem(x)  # (B, C, S/p, S/p)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb, context) if isinstance(block, nn.ModuleList) else block(h)
            skips.append(h)
        h = self._run(self.mid, h, emb, context)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, context)
            else:
                h = block(h)
        return self.out(h)  # (B, 3, S, S)
