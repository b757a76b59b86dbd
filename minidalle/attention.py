"""Scaled dot-product attention and multi-head attention, from scratch.

Shape legend: B batch, H heads, T query tokens, S key/value tokens, D width per head,
M model width (= H * D).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def combine_masks(mask: torch.Tensor | None, causal: bool, T: int, S: int, device) -> torch.Tensor | None:
    """One boolean mask broadcastable to (B, H, T, S), True = may attend."""
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
    if causal:
        # query i may look at keys 0..i (aligned at the end when S > T, as for cached keys)
        causal_mask = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
        mask = causal_mask if mask is None else mask & causal_mask
    return mask


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D)) v  (Vaswani et al. 2017, eq. 1).

    q (B, H, T, D), k and v (B, H, S, D); mask boolean broadcastable to (B, H, T, S),
    True = may attend. Returns (out (B, H, T, D), weights (B, H, T, S)); dropout_p drops
    weights before they mix v (the returned weights are the ones before dropout).
    A query row whose keys are all masked attends to nothing: its weights and output are 0
    (not NaN, in the forward and the backward pass), so such rows stay harmless.
    """
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    mask = combine_masks(mask, causal, T, S, q.device)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
        # softmax of a row of -inf only is 0/0 = NaN: give such rows finite scores, zero them below
        scores = scores.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, S), rows sum to 1
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # fully masked rows -> all-zero weights
    mixing = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return mixing @ v, weights  # (B, H, T, D), (B, H, T, S)


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention with one fused q/k/v projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if n_heads < 1 or d_model < 1:
            raise ValueError(f"d_model and n_heads must be positive, got d_model={d_model}, n_heads={n_heads}")
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # rows: q, then k, then v (as nn.MultiheadAttention)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, M = x.shape
        return x.view(B, T, self.n_heads, M // self.n_heads).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        context: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, M); context (B, S, M) for cross-attention (default: x itself).

        mask: boolean (B, S) key padding mask or anything broadcastable to (B, H, T, S),
        True = may attend. With return_weights, also returns the weights (B, H, T, S) and
        takes the explicit path; otherwise uses torch's fused kernel (same numbers).
        """
        B, T, M = x.shape
        if M != self.d_model:
            raise ValueError(f"expected width {self.d_model}, got input of shape {tuple(x.shape)}")
        if context is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, T, M) each
        else:  # cross-attention: queries from x, keys and values from the context
            if context.dim() != 3 or context.shape[0] != B or context.shape[2] != M:
                raise ValueError(f"context must have shape ({B}, S, {M}), got {tuple(context.shape)}")
            weight, bias = self.qkv.weight.split([M, 2 * M]), self.qkv.bias.split([M, 2 * M])
            q = F.linear(x, weight[0], bias[0])  # (B, T, M)
            k, v = F.linear(context, weight[1], bias[1]).chunk(2, dim=-1)  # (B, S, M) each
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, H, T|S, D)
        S = k.shape[-2]
        if mask is not None and mask.dim() == 2:
            if tuple(mask.shape) != (B, S):
                raise ValueError(f"a 2-D mask is a key padding mask of shape ({B}, {S}), got {tuple(mask.shape)}")
            mask = mask[:, None, None, :]  # (B, 1, 1, S) key padding mask
        p = self.dropout if self.training else 0.0
        if return_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask, causal, dropout_p=p)
        elif mask is None and (not causal or T == S):
            # no mask to build: torch's causal kernel (its top-left alignment equals ours when T == S)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)  # (B, H, T, D)
        else:
            full = combine_masks(mask, causal, T, S, x.device)
            # Same definition as the explicit path for rows with no key at all (output 0), whatever
            # the kernel does with them: let such rows see every key, then zero their output.
            # No host sync, so the GPU never waits on this check.
            empty = ~full.any(dim=-1, keepdim=True)  # (B|1, H|1, T|1, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=full | empty, dropout_p=p)  # (B, H, T, D)
            out = out.masked_fill(empty, 0.0)
        out = out.transpose(1, 2).reshape(B, T, M)  # (B, T, M)
        out = self.out(out)
        return (out, weights) if return_weights else out
