"""Attention against PyTorch's own: F.scaled_dot_product_attention and nn.MultiheadAttention.

Property tests draw random shapes and masks; masks are boolean with True = may attend (ours),
while nn.MultiheadAttention's masks say True = ignore.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from minidalle.attention import MultiHeadAttention, scaled_dot_product_attention

PROPERTY = settings(max_examples=30, deadline=None)


def random_padding_mask(B: int, S: int, g: torch.Generator) -> torch.Tensor:
    """(B, S) key padding mask, True on real keys; key 0 is always real (like a start token)."""
    mask = torch.rand(B, S, generator=g) < 0.6
    mask[:, 0] = True
    return mask


def causal_reference(T: int, S: int) -> torch.Tensor:
    """(T, S) True where query i may see key j: j <= i + S - T (ends aligned, as ours)."""
    i, j = torch.arange(T)[:, None], torch.arange(S)[None, :]
    return j <= i + (S - T)


def torch_copy(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention holding our weights (in_proj = qkv, out_proj = out)."""
    theirs = nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True, dtype=ours.qkv.weight.dtype)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        theirs.in_proj_bias.copy_(ours.qkv.bias)
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)
    return theirs


# ----------------------------------------------------------------------------- the function
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 7),
       extra=st.integers(0, 4), D=st.integers(1, 9), mask_kind=st.sampled_from(["none", "padding", "full"]),
       causal=st.booleans())
@PROPERTY
def test_sdpa_matches_torch(seed, B, H, T, extra, D, mask_kind, causal):
    g = torch.Generator().manual_seed(seed)
    S = T + extra  # S >= T so that no causal row is empty (checked separately)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, H, S, D, generator=g, dtype=torch.float64) for _ in range(2))
    mask = None
    if mask_kind == "padding":
        mask = random_padding_mask(B, S, g)[:, None, None, :]  # (B, 1, 1, S)
    elif mask_kind == "full":
        mask = torch.rand(B, H, T, S, generator=g) < 0.6
        mask[..., 0] = True
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)

    reference_mask = mask
    if causal:
        reference_mask = causal_reference(T, S) if mask is None else mask & causal_reference(T, S)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=reference_mask)
    torch.testing.assert_close(out, expected)
    if causal and mask is None and T == S:  # torch's own causal flag, too
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    # weights: rows sum to 1, zero where masked
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T, dtype=torch.float64))
    if reference_mask is not None:
        assert (weights.masked_select(~reference_mask.expand_as(weights)) == 0).all()


def test_sdpa_golden_numbers():
    # one query, two keys with scores 0 and 2/sqrt(2): weights softmax([0, sqrt 2])
    q = torch.tensor([[1.0, 1.0]])
    k = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out, weights = scaled_dot_product_attention(q, k, v)
    w1 = 1 / (1 + torch.exp(torch.tensor(-(2**0.5))))
    torch.testing.assert_close(weights, torch.stack([1 - w1, w1])[None])
    torch.testing.assert_close(out, torch.stack([1 - w1, w1])[None])


def test_fully_masked_rows_give_zeros_not_nan():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3, 4, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 2, 3, 3, dtype=torch.bool)
    mask[0, :, 1] = False  # query 1 of batch 0 may see nothing
    mask[1] = False  # batch 1 sees nothing at all
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert (out[0, :, 1] == 0).all() and (weights[0, :, 1] == 0).all()
    assert (out[1] == 0).all() and (weights[1] == 0).all()
    torch.testing.assert_close(weights[0, :, [0, 2]].sum(-1), torch.ones(2, 2))
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[1] == 0).all() and (k.grad[1] == 0).all() and (v.grad[1] == 0).all()


def test_causal_with_fewer_keys_than_queries_has_empty_rows():
    # T=4 queries, S=2 keys, ends aligned: queries 0 and 1 come before every key
    q, k, v = torch.randn(1, 1, 4, 3), torch.randn(1, 1, 2, 3), torch.randn(1, 1, 2, 3)
    out, weights = scaled_dot_product_attention(q, k, v, causal=True)
    assert weights[0, 0].tolist()[:2] == [[0.0, 0.0], [0.0, 0.0]]
    assert (out[0, 0, :2] == 0).all() and weights[0, 0, 2, 1] == 0 and weights[0, 0, 3].sum() > 0.999


def test_non_boolean_mask_is_rejected():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(TypeError, match="mask must be boolean"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 2))
    with pytest.raises(TypeError, match="mask must be boolean"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(2, 2), causal=True)


# ----------------------------------------------------------------------------- the module
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), T=st.integers(1, 7), heads=st.sampled_from([1, 2, 4]),
       head_width=st.integers(1, 5), padding=st.booleans(), causal=st.booleans())
@PROPERTY
def test_mha_matches_nn_multihead_attention(seed, B, T, heads, head_width, padding, causal):
    torch.manual_seed(seed)
    M = heads * head_width
    ours = MultiHeadAttention(M, heads).double()
    theirs = torch_copy(ours)
    x = torch.randn(B, T, M, dtype=torch.float64)
    mask = random_padding_mask(B, T, torch.Generator().manual_seed(seed)) if padding else None
    expected, expected_weights = theirs(
        x, x, x,
        key_padding_mask=None if mask is None else ~mask,  # torch: True = ignore
        attn_mask=~causal_reference(T, T) if causal else None,
        need_weights=True, average_attn_weights=False,
    )
    out, weights = ours(x, mask=mask, causal=causal, return_weights=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(ours(x, mask=mask, causal=causal), expected)  # fused path


def test_mha_gradients_match_nn_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4).double()
    theirs = torch_copy(ours)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    mask = random_padding_mask(3, 5, torch.Generator().manual_seed(1))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(3, 5, 16, dtype=torch.float64)
    (ours(x1, mask=mask) * target).sum().backward()
    (theirs(x2, x2, x2, key_padding_mask=~mask, need_weights=False)[0] * target).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.qkv.weight.grad, theirs.in_proj_weight.grad)
    torch.testing.assert_close(ours.out.weight.grad, theirs.out_proj.weight.grad)


def test_cross_attention_shape_and_reference():
    torch.manual_seed(0)
    ours = MultiHeadAttention(12, 3).double()
    x, context = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 7, 12, dtype=torch.float64)
    mask = random_padding_mask(2, 7, torch.Generator().manual_seed(0))
    out, weights = ours(x, context=context, mask=mask, return_weights=True)
    assert out.shape == (2, 5, 12) and weights.shape == (2, 3, 5, 7)
    expected, _ = torch_copy(ours)(x, context, context, key_padding_mask=~mask)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ours(x, context=context, mask=mask), expected)


@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), T=st.integers(1, 6), S=st.integers(1, 6),
       mask_kind=st.sampled_from(["none", "padding", "full"]), causal=st.booleans(), cross=st.booleans())
@PROPERTY
def test_fast_path_equals_explicit_path(seed, B, T, S, mask_kind, causal, cross):
    """The fused kernel (no weights asked) gives the explicit path's numbers, empty rows included."""
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(B, T, 8)
    context = torch.randn(B, S, 8) if cross else None
    keys = S if cross else T
    mask = None
    if mask_kind == "padding":
        mask = torch.rand(B, keys) < 0.5  # may leave a caption with no key at all
    elif mask_kind == "full":
        mask = torch.rand(B, 1, T, keys) < 0.5
    explicit, _ = mha(x, mask=mask, causal=causal, context=context, return_weights=True)
    fast = mha(x, mask=mask, causal=causal, context=context)
    torch.testing.assert_close(fast, explicit)
    assert torch.isfinite(fast).all()


def test_fully_masked_query_outputs_only_the_output_bias():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    mask = torch.tensor([[False] * 3, [True] * 3])
    for out in (mha(x, mask=mask), mha(x, mask=mask, return_weights=True)[0]):
        torch.testing.assert_close(out[0], mha.out.bias.detach().expand(3, 8))


def test_causal_future_tokens_do_not_change_earlier_outputs():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(2, 2, 16)  # new tokens 4 and 5
    for kwargs in ({}, {"return_weights": True}):
        a, b = mha(x, causal=True, **kwargs), mha(changed, causal=True, **kwargs)
        a, b = (a[0], b[0]) if kwargs else (a, b)
        torch.testing.assert_close(a[:, :4], b[:, :4])
        assert not torch.allclose(a[:, 4:], b[:, 4:])
    # without the causal mask the past does see the future
    assert not torch.allclose(mha(x)[:, :4], mha(changed)[:, :4])


def test_attention_is_permutation_equivariant():
    """Without position embeddings attention sees a set: permuting tokens permutes outputs."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 7, 16)
    mask = random_padding_mask(2, 7, torch.Generator().manual_seed(0))
    perm = torch.randperm(7)
    torch.testing.assert_close(mha(x, mask=mask)[:, perm], mha(x[:, perm], mask=mask[:, perm]))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4)
    x, context = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 3, 16)
    for kwargs in ({}, {"context": context}):
        mha.zero_grad()
        mha(x, **kwargs).pow(2).sum().backward()
        for name, p in mha.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x, return_weights=True)[0])
    mha.train()
    assert not torch.allclose(mha(x), mha(x))
    assert not torch.allclose(mha(x, return_weights=True)[0], mha(x, return_weights=True)[0])


def test_bad_widths_and_masks_give_clear_errors():
    with pytest.raises(ValueError, match="d_model=10 must be divisible by n_heads=3"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="must be positive"):
        MultiHeadAttention(8, 0)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"expected width 8, got input of shape \(2, 3, 6\)"):
        mha(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match=r"context must have shape \(2, S, 8\)"):
        mha(torch.randn(2, 3, 8), context=torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match=r"key padding mask of shape \(2, 3\)"):
        mha(torch.randn(2, 3, 8), mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        mha(torch.randn(2, 3, 8), mask=torch.ones(2, 3))


def test_parameter_count_formula():
    # fused q/k/v projection: 3 (M^2 + M); output projection: M^2 + M
    for M, heads in [(8, 2), (32, 4), (128, 4)]:
        mha = MultiHeadAttention(M, heads)
        assert sum(p.numel() for p in mha.parameters()) == 4 * M * M + 4 * M
        assert sum(p.numel() for p in mha.parameters()) == sum(
            p.numel() for p in nn.MultiheadAttention(M, heads).parameters())
