"""Word-level tokenizer over the shapes world's vocabulary, and an adapter to CLIP's BPE.

Shape legend: N captions, L context length (tokens).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple, Sequence

import torch

from minidalle.world import VOCABULARY

PAD, START, END = "<pad>", "<start>", "<end>"
BPE_VOCAB_SIZE = 49_408  # open_clip's SimpleTokenizer (CLIP's byte-pair encoding)
WORD = re.compile(r"[\w']+|[^\w\s]")  # a word, or one punctuation mark: "a cat." -> a, cat, .


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of a text (the world's captions: its words)."""
    return WORD.findall(text.lower())


def build_vocabulary(captions: Sequence[str]) -> tuple[str, ...]:
    """Every word of the captions, most frequent first (ties alphabetical): a WordTokenizer vocabulary."""
    counts = Counter(word for text in captions for word in split_words(text))
    return tuple(sorted(counts, key=lambda word: (-counts[word], word)))


class Tokens(NamedTuple):
    ids: torch.Tensor  # (N, L) int64, PAD after END
    mask: torch.Tensor  # (N, L) bool, True on real tokens (start, words, end)


class WordTokenizer:
    """One token per word of a vocabulary (default: the world's), plus pad/start/end, fixed context length.

    vocabulary: the words of your own captions (`build_vocabulary`), saved with a CLIP checkpoint.
    """

    def __init__(self, context_length: int = 16, vocabulary: Sequence[str] | None = None):
        self.context_length = context_length
        self.known_words = tuple(vocabulary) if vocabulary else VOCABULARY
        self.vocab = (PAD, START, END) + self.known_words
        self.index = {word: i for i, word in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise ValueError("the vocabulary repeats a word (or holds <pad>, <start> or <end>)")
        self.pad_id, self.start_id, self.end_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.vocab)

    def words(self, text: str) -> list[str]:
        """Lower-cased words of a caption; ValueError naming an unknown word."""
        words = split_words(text)
        for w in words:
            if w not in self.index:
                known = self.known_words[:40] + ((f"... ({len(self.known_words)} words)",)
                                                 if len(self.known_words) > 40 else ())
                raise ValueError(f"unknown word {w!r}; the tokenizer knows: {', '.join(known)}")
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
        texts = [texts] if isinstance(texts, str) else list(texts)
        for text in texts:  # open_clip would cut a long text silently; say so instead
            if len(self.tokenizer.encode(text)) + 2 > self.context_length:
                raise ValueError(f"{text!r} has {len(self.tokenizer.encode(text))} BPE tokens; "
                                 f"at most {self.context_length - 2} fit")
        ids = self.tokenizer(texts)
        return Tokens(ids, ids != 0)

    def pieces(self, text: str) -> list[str]:
        """The sub-word pieces of a text (without start/end), e.g. 'stripy' -> ['stri', 'py</w>']."""
        return [self.tokenizer.decoder[i] for i in self.tokenizer.encode(text)]
