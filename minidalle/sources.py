"""Where the training stages get their data: fresh renders of the shapes world, or an image
folder (`minidalle.data`), and in either case only this process's share of each global batch
under torchrun. Also a CLIP config that reads a folder's captions, and the figures a run on a
folder can report (a folder has no held-out compositions, so they are measured on its own pairs).
Shape legend: B batch, E embedding width, S image side.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

from minidalle import distributed
from minidalle.data import ImageFolder


def training_batch(data: ImageFolder | None, config, step: int, image_size: int = 32, offset: int = 0,
                   partial: bool = False) -> tuple[torch.Tensor, list[str]]:
    """This process's share of global batch `step`: (images (B, 3, S, S) in [0, 1], captions).

    data None: fresh renders of the train split, seeded by config.seed, step, offset and the
    process (one process: exactly the renders of a run without torchrun); a folder: its
    images in DistributedSampler order (`ImageFolder.batch_indices`).
    """
    if data is None:
        from minidalle.world import make_dataset

        batch = make_dataset(distributed.local_batch_size(config.batch_size), "train", partial=partial,
                             seed=distributed.rank_seed(config.seed * 1_000_003 + step + offset), image_size=image_size)
        return batch.images, batch.captions
    if data.image_size != image_size:
        raise ValueError(f"{data.folder} was loaded at {data.image_size}x{data.image_size}, the model takes "
                         f"{image_size}x{image_size}")
    return data.batch(step, config.batch_size, seed=config.seed + offset)


def clip_config_for(captions: Sequence[str], base, tokenizer: str = "word"):
    """base (a CLIPConfig) with a text side for these captions: a vocabulary of their words
    ("word") or open_clip's BPE ("bpe", any text), and a context that fits the longest one."""
    from minidalle.tokenizer import BPE_VOCAB_SIZE, BPETokenizer, build_vocabulary, split_words

    unique = list(dict.fromkeys(captions))
    if tokenizer == "word":
        vocabulary, size = build_vocabulary(unique), None
        longest = max(len(split_words(text)) for text in unique)
    elif tokenizer == "bpe":
        bpe = BPETokenizer().tokenizer
        vocabulary, size, longest = (), BPE_VOCAB_SIZE, max(len(bpe.encode(text)) for text in unique)
    else:
        raise ValueError(f"tokenizer must be 'word' or 'bpe', not {tokenizer!r}")
    text = dataclasses.replace(base.text, vocab_size=size or 3 + len(vocabulary),
                               context_length=max(base.text.context_length, longest + 2))
    return dataclasses.replace(base, tokenizer=tokenizer, vocabulary=vocabulary, text=text)


@torch.no_grad()
def folder_embeddings(clip, data: ImageFolder, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings of every folder image and of its caption, computed once: (N, E), (N, E)."""
    images = torch.cat([clip.encode_image(data.images[i:i + batch].float() / 255)
                        for i in range(0, len(data), batch)])
    unique = list(dict.fromkeys(data.captions))  # captions often repeat; encode each once
    text = torch.cat([clip.encode_text(unique[i:i + batch]) for i in range(0, len(unique), batch)])
    row = {caption: i for i, caption in enumerate(unique)}
    return images, text[torch.tensor([row[c] for c in data.captions], device=text.device)]


def prior_pairs(clip, data: ImageFolder, config) -> tuple[torch.Tensor, Callable]:
    """(image embeddings (N, E) of the folder, step -> (text (B, E), image (B, E)) of this process's share)."""
    images, text = folder_embeddings(clip, data)

    def draw(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = data.batch_indices(step, config.batch_size, config.seed).to(images.device)
        return text[index], images[index]

    return images, draw


@torch.no_grad()
def folder_clip_metrics(model, data: ImageFolder, n: int = 512) -> dict:
    """Caption retrieval top-1 (batches of 128, caption-text match) on the folder's first n pairs."""
    from minidalle.clip import retrieval_accuracy

    n = min(n, len(data))
    images, captions = data.images[:n].float() / 255, data.captions[:n]
    starts = range(0, n, 128)
    accuracy = sum(retrieval_accuracy(model.encode_image(images[i:i + 128]), model.encode_text(captions[i:i + 128]),
                                      captions[i:i + 128]) for i in starts) / len(starts)
    return {"folder_retrieval_top1": accuracy, "logit_scale": model.clamped_scale().item()}


@torch.no_grad()
def folder_prior_metrics(prior, clip, data: ImageFolder, n: int = 256) -> dict:
    """Mean cosine of the prior's embedding (and of the caption's) to the true image embedding, first n pairs."""
    n = min(n, len(data))
    image = clip.encode_image(data.images[:n].float() / 255)
    text = clip.encode_text(data.captions[:n])
    return {"folder_prior_cosine": (prior.sample(text, seed=0) * image).sum(-1).mean().item(),
            "folder_text_cosine": (text * image).sum(-1).mean().item()}
