"""Checks for notebooks 01 (attention) and 02 (transformers)."""
from __future__ import annotations

import math

import torch

from minidalle.checks._common import _call, _compare, _integer, _isolated, _name, _passed, _same, _tensor


# ----------------------------------------------------------------------------- 01 attention
@_isolated
def check_attention_weights(fn) -> None:
    """fn(q (..., T, d), k (..., S, d)) -> softmax(q k^T / sqrt(d)) over the keys, (..., T, S)."""
    __tracebackhide__ = True
    from minidalle.attention import scaled_dot_product_attention
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for q_shape, k_shape in [((5, 16), (7, 16)), ((2, 3, 4, 64), (2, 3, 6, 64)), ((1, 8, 8), (1, 8, 8)),
                             ((3, 1), (2, 1))]:
        q, k = torch.randn(q_shape, generator=g), torch.randn(k_shape, generator=g)
        want = scaled_dot_product_attention(q, k, k)[1]
        d, scores = q.shape[-1], q @ k.transpose(-2, -1)
        context = f" for q of shape {q_shape} and k of shape {k_shape}"
        got = _call(fn, q, k)
        if torch.is_tensor(got) and got.shape != want.shape and got.shape == want.transpose(-2, -1).shape:
            raise AssertionError(f"{name}{context} returned shape {tuple(got.shape)}, expected {tuple(want.shape)}: "
                                 "rows are queries (T) and columns keys (S), so use q @ k.transpose(-2, -1)")
        if torch.is_tensor(got) and got.shape == want.shape and not torch.allclose(
                got.detach().double().sum(-1), torch.ones(()).double(), atol=1e-4):
            if _same(got, (scores / math.sqrt(d)).softmax(-2)):
                raise AssertionError(f"{name}{context}: the softmax runs over the wrong dimension: each query's "
                                     "weights (a row) must sum to 1 over the keys, so use softmax(dim=-1)")
            raise AssertionError(f"{name}{context}: the weights of each query (a row) must sum to 1 over the keys; "
                                 "yours do not (a softmax over the last dimension does that)")
        _compare(name, got, want, context, wrong=[
            (scores.softmax(-1), f"the scores are not scaled: divide q k^T by sqrt(d) = {math.sqrt(d):.4g} "
             "before the softmax"),
            ((scores / d).softmax(-1), f"divide by sqrt(d) = {math.sqrt(d):.4g}, not by d = {d}"),
            ((scores * math.sqrt(d)).softmax(-1), "divide by sqrt(d), don't multiply"),
        ])
    _passed(name, "matches minidalle.attention on batched, rectangular (T != S) and tiny inputs")


@_isolated
def check_causal_mask(fn) -> None:
    """fn(T, S) -> boolean (T, S): True where query i may attend to key j (keys aligned at the end)."""
    __tracebackhide__ = True
    from minidalle.attention import combine_masks
    name = _name(fn)
    for T, S in [(4, 4), (7, 7), (1, 1), (3, 5), (1, 4), (2, 6), (5, 3)]:
        want, context = combine_masks(None, True, T, S, "cpu"), f" for T={T} queries and S={S} keys"
        got = _call(fn, T, S)
        if torch.is_tensor(got) and got.dtype != torch.bool:
            raise AssertionError(f"{name}{context} returned a {str(got.dtype).replace('torch.', '')} tensor: a mask "
                                 "is boolean (dtype=torch.bool), True = may attend")
        got = _tensor(name, got, want, context)
        if torch.equal(got, want):
            continue
        ones = torch.ones(T, S, dtype=torch.bool)
        known = [
            (~want, "True and False are swapped: in this course True means 'may attend' (PyTorch's "
             "nn.MultiheadAttention masks use the opposite convention)"),
            (ones.triu(S - T), "the mask is the wrong way round: query i (a row) may look at keys up to its own "
             "position (lower triangle, tril), yours lets queries see the future (upper triangle)"),
            (ones.tril(S - T - 1), "each token must also see itself: keep the diagonal"),
            (ones.tril(), "queries and keys are aligned at the end (the last query sees every key): query i sits at "
             "position i + S - T among the keys, so use tril(diagonal=S - T)"),
        ]
        hint = next((message for value, message in known if torch.equal(got, value)), None)
        if hint is None:
            hint = f"expected\n{want.int()}\n  got\n{got.int()}"
        raise AssertionError(f"{name}{context}: {hint}")
    _passed(name, "right for T = S, for S > T (cached keys) and for S < T, True = may attend")


# ----------------------------------------------------------------------------- 02 transformers
@_isolated
def check_patchify(fn) -> None:
    """fn(images (B, 3, S, S), p) -> patches (B, (S/p)^2, 3 p p), row by row, each flattened as (3, p, p)."""
    __tracebackhide__ = True
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, S, p in [(2, 32, 4), (1, 32, 8), (3, 16, 2), (1, 12, 3)]:
        images = torch.rand(B, 3, S, S, generator=g)
        grid = images.unfold(2, p, p).unfold(3, p, p)  # (B, 3, S/p, S/p, p, p)
        n = (S // p) ** 2

        def flat(*order):
            return grid.permute(*order).reshape(B, n, 3 * p * p)

        want = flat(0, 2, 3, 1, 4, 5)
        context = f" for images of shape {(B, 3, S, S)} and p={p}"
        _compare(name, _call(fn, images, p), want, context, wrong=[
            (flat(0, 3, 2, 1, 4, 5), "the patches are in the wrong order: number them row by row, left to right "
             "(patch index = grid_row * (S // p) + grid_col)"),
            (flat(0, 2, 3, 4, 5, 1), "flatten each patch channel first, as (3, p, p), the layout of Conv2d's "
             "weight (out, 3, p, p); yours keeps the 3 colours of a pixel together"),
            (flat(0, 2, 3, 1, 5, 4), "inside a patch the pixels go row by row: (channel, pixel row, pixel column)"),
            (flat(0, 3, 2, 1, 5, 4), "rows and columns are swapped (the image is read transposed): images are "
             "(B, C, height, width), so dim 2 runs over rows and dim 3 over columns"),
            (images.reshape(B, n, 3 * p * p), "a patch is a p x p square of the image; a plain reshape takes runs "
             "of consecutive pixels instead (use unfold, or view + permute)"),
        ], shape_hint=f"\n  hint: {n} patches of 3*{p}*{p} = {3 * p * p} numbers each")
    # The point of the layout: a linear layer on the patches is the ViT's patch-embedding convolution.
    conv = torch.nn.Conv2d(3, 8, 4, stride=4)
    images = torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        linear = _call(fn, images, 4) @ conv.weight.reshape(8, -1).T + conv.bias
        _compare(name, linear, conv(images).flatten(2).transpose(1, 2), " (as a patch embedding)")
    _passed(name, "right order and layout; a linear layer on your patches equals the ViT's Conv2d patch embedding")


@_isolated
def check_text_encoder_parameters(fn) -> None:
    """fn(vocab_size, context_length, width, layers, mlp_ratio) -> number of parameters of a TextEncoder."""
    __tracebackhide__ = True
    from minidalle.transformer import TextConfig, TextEncoder
    name = _name(fn)
    for V, L, M, layers, heads, r in [(28, 16, 96, 2, 4, 4), (28, 16, 32, 1, 2, 4), (100, 8, 64, 3, 4, 2),
                                      (5, 3, 8, 0, 2, 4)]:
        context = (f" for vocab_size={V}, context_length={L}, width={M}, layers={layers}, mlp_ratio={r}")
        got = _integer(name, _call(fn, V, L, M, layers, r), context)
        want = sum(p.numel() for p in TextEncoder(TextConfig(V, L, M, layers, heads, r)).parameters())
        if got == want:
            continue
        gap = want - got
        known = {2 * M: "the final LayerNorm (a weight and a bias: 2 * width) is missing",
                 L * M: "the position embedding (context_length * width) is missing",
                 V * M: "the token embedding (vocab_size * width) is missing",
                 layers * 4 * M: "each block has two LayerNorms of 2 * width each",
                 layers * (5 + r) * M: "the biases of the linear layers are missing (4 * width in attention, "
                 "(mlp_ratio + 1) * width in the MLP)",
                 layers * ((4 + 2 * r) * M * M + (9 + r) * M): "the blocks are missing"}
        hint = known.get(gap, f"yours is {'short' if gap > 0 else 'over'} by {abs(gap)}; count embeddings, "
                         "blocks (attention, MLP, 2 LayerNorms) and the final LayerNorm")
        raise AssertionError(f"{name} is wrong{context}: expected {want}, got {got}\n  {hint}")
    _passed(name, "matches the parameter count of minidalle's TextEncoder for 4 configurations")
