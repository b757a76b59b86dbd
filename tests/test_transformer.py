"""Transformer block, text encoder and vision transformer: masks, symmetries, shapes, sizes."""
import pytest
import torch
import torch.nn.functional as F

from minidalle.tokenizer import WordTokenizer
from minidalle.transformer import Block, TextConfig, TextEncoder, VisionConfig, VisionTransformer
from minidalle.world import SHAPES, make_dataset

CAPTIONS = ["a red circle", "a large red and green striped circle on the left", "a striped cross in the center"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_params(M: int, r: int) -> int:
    # 2 LayerNorms (2M each) + attention (4M^2 + 4M) + MLP (M*rM + rM + rM*M + M)
    return 4 * M + (4 * M * M + 4 * M) + (2 * r * M * M + r * M + M)


def encode(captions=CAPTIONS, context_length: int = 16):
    return WordTokenizer(context_length).encode(captions)


def test_block_parameter_count_formula():
    for M, heads, r in [(8, 2, 4), (32, 2, 2), (128, 4, 4)]:
        assert n_params(Block(M, heads, r)) == block_params(M, r) == (4 + 2 * r) * M * M + (9 + r) * M


def test_text_encoder_parameter_count_formula():
    for config in (TextConfig.tiny(), TextConfig(), TextConfig(width=96, layers=2, heads=4)):
        M = config.width
        expected = (config.vocab_size * M + config.context_length * M  # token and position embeddings
                    + config.layers * block_params(M, config.mlp_ratio) + 2 * M)  # blocks, final norm
        assert n_params(TextEncoder(config)) == expected


def test_vision_transformer_parameter_count_formula():
    for config in (VisionConfig.tiny(), VisionConfig()):
        M, p = config.width, config.patch_size
        P = (config.image_size // p) ** 2
        expected = (3 * p * p * M + M  # patch embedding (a strided convolution)
                    + M + (P + 1) * M  # class token, position embeddings
                    + config.layers * block_params(M, config.mlp_ratio) + 2 * M)
        assert n_params(VisionTransformer(config)) == expected


def test_text_encoder_shapes_weights_and_pooling():
    torch.manual_seed(0)
    config = TextConfig.tiny()
    encoder = TextEncoder(config)
    ids, mask = encode()
    tokens, pooled, weights = encoder(ids, mask, return_weights=True)
    assert tokens.shape == (3, 16, config.width) and pooled.shape == (3, config.width)
    assert len(weights) == config.layers and weights[0].shape == (3, config.heads, 16, 16)
    # pooled is the end token's output (CLIP pools there)
    end = mask.sum(1) - 1
    assert (ids[torch.arange(3), end] == WordTokenizer().end_id).all()
    torch.testing.assert_close(pooled, tokens[torch.arange(3), end])
    # every query puts weight 1 on real keys and none on padding
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(3, config.heads, 16))
        assert (w.masked_select(~mask[:, None, None, :].expand_as(w)) == 0).all()
    # the fused path (no weights asked) gives the same numbers
    tokens_fast, pooled_fast = encoder(ids, mask)
    torch.testing.assert_close(tokens_fast, tokens)
    torch.testing.assert_close(pooled_fast, pooled)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    encoder = TextEncoder(TextConfig.tiny()).eval()
    ids, mask = encode()
    tokens, pooled = encoder(ids, mask)
    # 1) other ids in the padded positions
    noisy = torch.where(mask, ids, torch.randint(3, len(WordTokenizer()), ids.shape))
    tokens2, pooled2 = encoder(noisy, mask)
    torch.testing.assert_close(tokens2[mask], tokens[mask])
    torch.testing.assert_close(pooled2, pooled)
    # 2) a caption alone, cut right after its end token, gives the same outputs
    for row in range(len(CAPTIONS)):
        n = int(mask[row].sum())
        alone, alone_pooled = encoder(ids[row:row + 1, :n], mask[row:row + 1, :n])
        torch.testing.assert_close(alone[0], tokens[row, :n])
        torch.testing.assert_close(alone_pooled[0], pooled[row])


def test_block_causal_future_tokens_do_not_change_earlier_outputs():
    torch.manual_seed(0)
    block = Block(16, 4)
    x = torch.randn(2, 6, 16)
    changed = x.clone()
    changed[:, 3] = torch.randn(2, 16)
    a, b = block(x, causal=True), block(changed, causal=True)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_block_is_permutation_equivariant():
    torch.manual_seed(0)
    block = Block(16, 4)
    x = torch.randn(2, 7, 16)
    mask = torch.rand(2, 7) < 0.7
    mask[:, 0] = True
    perm = torch.randperm(7)
    torch.testing.assert_close(block(x, mask=mask)[:, perm], block(x[:, perm], mask=mask[:, perm]))


def test_position_embeddings_break_permutation_symmetry():
    torch.manual_seed(0)
    encoder = TextEncoder(TextConfig.tiny())
    ids, mask = encode(["a red circle"])  # <start> a red circle <end>
    swapped = ids[:, [0, 1, 3, 2] + list(range(4, 16))]  # <start> a circle red <end>
    tokens, _ = encoder(ids, mask)
    tokens_swapped, _ = encoder(swapped, mask)
    assert not torch.allclose(tokens[:, 2], tokens_swapped[:, 3])  # same word "red", other place


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    text = TextEncoder(TextConfig.tiny())
    ids, mask = encode()
    tokens, pooled = text(ids, mask)
    (tokens[mask].pow(2).sum() + pooled.pow(2).sum()).backward()
    vision = VisionTransformer(VisionConfig.tiny())
    tokens, pooled = vision(torch.rand(2, 3, 32, 32))
    (tokens.pow(2).sum() + pooled.pow(2).sum()).backward()
    for model in (text, vision):
        for name, p in model.named_parameters():
            if name == "token_embedding.weight":  # only the rows of words that appear
                assert p.grad[ids[mask].unique()].abs().sum(1).gt(0).all()
                continue
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vision_transformer_shapes():
    torch.manual_seed(0)
    config = VisionConfig.tiny()
    tokens, pooled = VisionTransformer(config)(torch.rand(5, 3, 32, 32))
    n_patches = (32 // config.patch_size) ** 2
    assert tokens.shape == (5, 1 + n_patches, config.width) and pooled.shape == (5, config.width)
    torch.testing.assert_close(pooled, tokens[:, 0])


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 1, 32, 32), (3, 32, 32), (2, 3, 32, 31)])
def test_vision_transformer_rejects_wrong_image_sizes(shape):
    vit = VisionTransformer(VisionConfig.tiny())
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\), got"):
        vit(torch.rand(shape))


def test_bad_configs_and_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="image_size 32 is not a multiple of patch_size 5"):
        VisionConfig(patch_size=5)
    with pytest.raises(ValueError, match="must be divisible by n_heads"):
        TextEncoder(TextConfig(width=30, heads=4))
    with pytest.raises(ValueError, match="must be divisible by n_heads"):
        VisionTransformer(VisionConfig(width=30, heads=4))
    encoder = TextEncoder(TextConfig.tiny())
    ids, mask = encode(context_length=20)
    with pytest.raises(ValueError, match="20 tokens do not fit the context length 16"):
        encoder(ids, mask)
    ids, mask = encode()
    with pytest.raises(ValueError, match="must have the shape of ids"):
        encoder(ids, mask[:, :8])


def test_text_encoder_overfits_shape_words():
    """Tiny overfit run: a linear head on the pooled output learns each caption's shape."""
    torch.manual_seed(0)
    data = make_dataset(64, seed=0, partial=True)
    ids, mask = WordTokenizer().encode(data.captions)
    labels = torch.tensor([SHAPES.index(a.shape) for a in data.attributes])
    encoder, head = TextEncoder(TextConfig.tiny()), torch.nn.Linear(32, len(SHAPES))
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(60):
        loss = F.cross_entropy(head(encoder(ids, mask)[1]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (head(encoder(ids, mask)[1]).argmax(1) == labels).float().mean() == 1.0
