"""Word-level tokenizer and the open_clip BPE adapter."""
import pytest
import torch

from minidalle.tokenizer import BPETokenizer, WordTokenizer
from minidalle.world import VOCABULARY, all_scenes, caption


def test_encode_decode_round_trip_and_mask():
    tok = WordTokenizer(context_length=16)
    texts = [caption(s) for s in all_scenes()[::37]] + ["a circle"]
    ids, mask = tok.encode(texts)
    assert ids.shape == mask.shape == (len(texts), 16) and ids.dtype == torch.long
    assert tok.decode(ids) == texts
    assert (ids[:, 0] == tok.start_id).all()
    lengths = mask.sum(dim=1)
    assert lengths.tolist() == [len(t.split()) + 2 for t in texts]
    assert (ids[torch.arange(len(texts)), lengths - 1] == tok.end_id).all()
    assert len(tok) == len(VOCABULARY) + 3


def test_unknown_word_and_too_long():
    tok = WordTokenizer(context_length=8)
    with pytest.raises(ValueError, match="unknown word 'pink'"):
        tok.encode("a pink circle")
    with pytest.raises(ValueError, match="at most 6"):
        tok.encode("a large red and green striped circle on the left")


def test_bpe_adapter_matches_open_clip():
    import open_clip

    bpe = BPETokenizer(context_length=16)
    text = "a large red and green striped circle on the left"
    ids, mask = bpe.encode([text])
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=16)([text])
    assert torch.equal(ids, reference)
    assert len(bpe) == 49408
    assert mask.sum() == len(bpe.pieces(text)) + 2
    assert len(bpe.pieces("stripy")) >= 2  # an unknown word becomes several pieces, no error
