"""Transformer encoders: a pre-norm block, a text encoder and a small vision transformer.

Shape legend: B batch, T tokens, M width, P patches, C=3 channels, S image side.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minidalle.attention import MultiHeadAttention
from minidalle.tokenizer import WordTokenizer


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = len(WordTokenizer())
    context_length: int = 16
    width: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: int = 4

    @classmethod
    def tiny(cls) -> "TextConfig":
        return cls(width=32, layers=1, heads=2)


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 32
    patch_size: int = 4
    width: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: int = 4

    @classmethod
    def tiny(cls) -> "VisionConfig":
        return cls(patch_size=8, width=32, layers=1, heads=2)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                return_weights: bool = False):
        """x (B, T, M), mask (B, T) True on real tokens -> (B, T, M) [, weights (B, H, T, T)]."""
        attended = self.attn(self.norm1(x), mask=mask, causal=causal, return_weights=return_weights)
        attended, weights = attended if return_weights else (attended, None)
        x = x + attended
        x = x + self.mlp(self.norm2(x))
        return (x, weights) if return_weights else x


class TextEncoder(nn.Module):
    """Token + position embeddings, transformer blocks; pooled output at the end token (as CLIP)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(config.context_length, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, return_weights: bool = False):
        """ids (B, T) int, mask (B, T) True on real tokens -> tokens (B, T, M), pooled (B, M)
        [, attention weights per layer, each (B, H, T, T)]."""
        B, T = ids.shape
        if T > self.config.context_length:
            raise ValueError(f"{T} tokens do not fit the context length {self.config.context_length}")
        if mask.shape != ids.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must have the shape of ids {tuple(ids.shape)}")
        x = self.token_embedding(ids) + self.position_embedding[:T]  # (B, T, M)
        all_weights = []
        for block in self.blocks:
            x = block(x, mask=mask, return_weights=return_weights)
            if return_weights:
                x, weights = x
                all_weights.append(weights)
        x = self.norm(x)
        end = mask.long().sum(dim=1) - 1  # index of the end token per caption
        pooled = x[torch.arange(B, device=x.device), end]  # (B, M)
        return (x, pooled, all_weights) if return_weights else (x, pooled)


class VisionTransformer(nn.Module):
    """Patch embedding + class token + position embeddings + blocks (Dosovitskiy et al. 2021)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        n_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embedding = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        self.class_token = nn.Parameter(0.02 * torch.randn(config.width))
        self.position_embedding = nn.Parameter(0.02 * torch.randn(n_patches + 1, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, images: torch.Tensor):
        """images (B, 3, S, S) in [0, 1] -> tokens (B, 1 + P, M), pooled class token (B, M)."""
        S = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"expected images of shape (B, 3, {S}, {S}), got {tuple(images.shape)}")
        B = images.shape[0]
        x = self.patch_embedding(images * 2 - 1)  # (B, M, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, P, M)
        cls = self.class_token.expand(B, 1, -1)  # (B, 1, M)
        x = torch.cat([cls, x], dim=1) + self.position_embedding  # (B, 1 + P, M)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x, x[:, 0]
