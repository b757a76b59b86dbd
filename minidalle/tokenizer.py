"""Word-level tokenizer over the shapes world's vocabulary, and an adapter to CLIP's BPE.

Shape legend: N captions, L context length (tokens).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from minidalle.world import VOCABULARY

PAD, START, END = "<pad>", "<start>", "<end>"


class Tokens(NamedTuple):
    ids: torch.Tensor  # (N, L) int64, PAD after END
    mask: torch.Tensor  # (N, L) bool, True on real tokens (start, words, end)


class WordTokenizer:
    """One token per word of the world's vocabulary, plus pad/start/end, fixed context length.

    extra_words: new words (notebook 10) appended after the old ones, so old ids never move.
    """

    def __init__(self, context_length: int = 16, extra_words: Sequence[str] = ()):
        extra_words = tuple(extra_words)
        for word in extra_words:
            if not isinstance(word, str) or not word.isalpha() or word != word.lower():
                raise ValueError(f"a new word must be one lower-case word, got {word!r}")
        if len(set(VOCABULARY + extra_words)) != len(VOCABULARY) + len(extra_words):
            raise ValueError(f"new words must be new and distinct, got {extra_words}")
        self.context_length, self.extra_words = context_length, extra_words
        self.vocab = (PAD, START, END) + VOCABULARY + extra_words
        self.index = {word: i for i, word in enumerate(self.vocab)}
        self.pad_id, self.start_id, self.end_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.vocab)

    def words(self, text: str) -> list[str]:
        """Lower-cased words of a caption; ValueError naming an unknown word."""
        words = text.lower().split()
        for w in words:
            if w not in self.index:
                raise ValueError(f"unknown word {w!r}; the tokenizer knows: {', '.join(self.vocab[3:])}")
        if len(words) + 2 > self.context_length:
            raise ValueError(f"{text!r} has {len(words)} words; at most {self.context_length - 2} fit")
        return words

    def encode(self, texts: str | Sequence[str]) -> Tokens:
        """Token ids (N, L) and padding mask (N, L) for a caption or a list of captions."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            seq = [self.start_id] + [self.index[w] for w in self.words(text)] + [self.end_id]
            ids[row, : len(seq)] = torch.tensor(seq)
        return Tokens(ids, ids != self.pad_id)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Captions back from ids (N, L), dropping special tokens."""
        specials = {self.pad_id, self.start_id, self.end_id}
        return [" ".join(self.vocab[i] for i in row.tolist() if i not in specials) for row in ids]


class BPETokenizer:
    """open_clip's byte-pair-encoding tokenizer (CLIP's own, 49,408 tokens) on the same captions."""

    def __init__(self, context_length: int = 16):
        from open_clip.tokenizer import SimpleTokenizer  # ships its vocabulary: works offline

        self.tokenizer = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length

    def __len__(self) -> int:
        return len(self.tokenizer.encoder)

    def encode(self, texts: str | Sequence[str]) -> Tokens:
        """Token ids (N, L) with CLIP's start/end tokens, and the mask of non-padding tokens."""
        ids = self.tokenizer([texts] if isinstance(texts, str) else list(texts))
        return Tokens(ids, ids != 0)

    def pieces(self, text: str) -> list[str]:
        """The sub-word pieces of a text (without start/end), e.g. 'stripy' -> ['stri', 'py</w>']."""
        return [self.tokenizer.decoder[i] for i in self.tokenizer.encode(text)]
