"""CLIP: an image encoder and a text encoder trained contrastively into one embedding space.

Radford et al. 2021. Shape legend: B batch, E embedding width, M encoder width, K classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints
from minidalle.distributed import gather
from minidalle.tokenizer import BPE_VOCAB_SIZE, BPETokenizer, WordTokenizer
from minidalle.transformer import TextConfig, TextEncoder, VisionConfig, VisionTransformer
from minidalle.world import VOCABULARY, all_scenes, caption

MAX_LOGIT_SCALE = 100.0  # as in CLIP: the temperature may not drop below 1/100


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 64
    image_encoder: str = "cnn"  # "cnn" (default: measured better on CPU, see notebook 03) or "vit"
    cnn_width: int = 32
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=lambda: TextConfig(width=96, layers=2, heads=4))
    init_temperature: float = 0.07
    tokenizer: str = "word"  # "word" (one token per word) or "bpe" (open_clip's, for free text)
    vocabulary: tuple[str, ...] = ()  # the word tokenizer's words; () = the shapes world's
    # Fields added after the first shipped checkpoints: a JSON without them means these defaults.
    ADDED_FIELDS: ClassVar[tuple[str, ...]] = ("tokenizer", "vocabulary")

    @classmethod
    def tiny(cls) -> "CLIPConfig":
        return cls(embed_dim=16, cnn_width=8, vision=VisionConfig.tiny(), text=TextConfig.tiny())

    @property
    def world_tokenizer(self) -> bool:
        """True when the text encoder reads the shapes world's own vocabulary."""
        return self.tokenizer == "word" and not self.vocabulary

    def __post_init__(self):
        if self.image_encoder not in ("cnn", "vit"):
            raise ValueError(f"image_encoder must be 'cnn' or 'vit', not {self.image_encoder!r}")
        if self.tokenizer not in ("word", "bpe"):
            raise ValueError(f"tokenizer must be 'word' or 'bpe', not {self.tokenizer!r}")
        size = 3 + len(self.vocabulary or VOCABULARY) if self.tokenizer == "word" else BPE_VOCAB_SIZE
        if self.text.vocab_size != size:  # else token ids would index past the embedding table
            raise ValueError(f"text.vocab_size is {self.text.vocab_size}, but the {self.tokenizer} tokenizer "
                             f"has {size} tokens")


def make_tokenizer(config: CLIPConfig) -> WordTokenizer | BPETokenizer:
    """The tokenizer a CLIP of this config reads its captions with."""
    if config.tokenizer == "bpe":
        return BPETokenizer(config.text.context_length)
    return WordTokenizer(config.text.context_length, config.vocabulary)


class ConvEncoder(nn.Module):
    """A small CNN: 32 -> 16 -> 8 -> 4 pixels, then global average pooling."""

    def __init__(self, width: int):
        super().__init__()

        def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.GELU())

        w = width
        self.net = nn.Sequential(stage(3, w, 1), stage(w, 2 * w, 2), stage(2 * w, 2 * w, 1),
                                 stage(2 * w, 4 * w, 2), stage(4 * w, 4 * w, 2))
        self.out_width = 4 * w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1] -> features (B, M)."""
        x = self.net(images * 2 - 1)  # (B, M, S/8, S/8)
        return x.mean(dim=(2, 3))  # (B, M); position survives through the padding borders


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3), open_clip's convention.

    image_features, text_features (B, E) L2-normalized; logit_scale already exponentiated.
    Pair i of the batch is the positive for row i and column i; everything else is a negative.
    """
    logits = logit_scale * image_features @ text_features.T  # (B, B) image i vs text j
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class CLIP(nn.Module):
    """Image and text encoders projected into one L2-normalized embedding space."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.tokenizer = make_tokenizer(config)
        if config.image_encoder == "cnn":
            self.visual = ConvEncoder(config.cnn_width)
            vision_width = self.visual.out_width
        else:
            self.visual = VisionTransformer(config.vision)
            vision_width = config.vision.width
        self.text = TextEncoder(config.text)
        self.image_projection = nn.Linear(vision_width, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(config.text.width, config.embed_dim, bias=False)
        # Stored as a log, as in CLIP/open_clip: exp(logit_scale) multiplies the cosines.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) float in [0, 1] -> unit-norm embeddings (B, E)."""
        size = self.config.vision.image_size
        if not torch.is_tensor(images) or images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected images of shape (N, 3, {size}, {size}) in [0, 1], got {shape}")
        images = images.to(self.device, self.logit_scale.dtype)  # float32, or float64 for exact comparisons
        features = self.visual(images)
        features = features[1] if isinstance(features, tuple) else features  # ViT: pooled class token
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_text(self, captions: str | Sequence[str]) -> torch.Tensor:
        """captions (B strings of the world's vocabulary) -> unit-norm embeddings (B, E)."""
        ids, mask = self.tokenizer.encode(captions)
        _, pooled = self.text(ids.to(self.device), mask.to(self.device))
        return F.normalize(self.text_projection(pooled), dim=-1)

    def clamped_scale(self) -> torch.Tensor:
        """exp(logit_scale), kept <= 100 (the log is clamped in place after each step too)."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        """The contrastive loss of a batch of matching (image, caption) pairs.

        Under torchrun the loss is over the global batch: every process's pairs (`gather`).
        """
        return contrastive_loss(gather(self.encode_image(images)), gather(self.encode_text(captions)),
                                self.clamped_scale())

    def after_step(self) -> None:
        """Called by the trainer after each optimizer step: keep exp(logit_scale) <= 100."""
        with torch.no_grad():
            self.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))


# ----------------------------------------------------------------------------- measures
@torch.no_grad()
def retrieval_accuracy(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str] | None = None,
                       k: int = 1) -> float:
    """Image -> text top-k accuracy within a batch (B, E) x (B, E).

    With captions, a retrieved caption counts as right when its text equals the image's
    caption (batches may repeat captions); without, only the paired index counts.
    """
    sims = image_emb @ text_emb.T  # (B, B)
    top = sims.topk(k, dim=1).indices  # (B, k)
    if captions is None:
        hits = (top == torch.arange(len(sims), device=sims.device)[:, None]).any(dim=1)
    else:
        hits = torch.tensor([any(captions[j] == captions[i] for j in row) for i, row in enumerate(top.tolist())])
    return hits.float().mean().item()


@torch.no_grad()
def zero_shot_scores(model: CLIP, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Cosine similarity (N, K) of each image to each prompt (zero-shot classification logits)."""
    return model.encode_image(images) @ model.encode_text(list(prompts)).T


@torch.no_grad()
def zero_shot_classify(model: CLIP, images: torch.Tensor, prompts: dict[str, str]) -> list[str]:
    """For each image, the label whose prompt is most similar, e.g. {"circle": "a circle", ...}."""
    labels = list(prompts)
    return [labels[i] for i in zero_shot_scores(model, images, prompts.values()).argmax(dim=1).tolist()]


ATTRIBUTES = ("shape", "color", "striped", "color2", "size", "position")


@torch.no_grad()
def zero_shot_attributes(model: CLIP, images: torch.Tensor, batch_size: int = 512) -> dict[str, list]:
    """Zero-shot attributes of each image: CLIP's softmax over all 1,960 full captions,
    summed per attribute value (marginalized), then the most likely value.

    Returns {"shape": [...], "color": [...], "striped": [...], "color2": [...], "size": [...],
    "position": [...]}, one entry per image (color2 is None for solid).
    """
    embeddings = [model.encode_image(images[start:start + batch_size]) for start in range(0, len(images), batch_size)]
    return zero_shot_attributes_of_embeddings(model, torch.cat(embeddings) if embeddings else images.new_zeros(0, 0))


@torch.no_grad()
def zero_shot_attributes_of_embeddings(model: CLIP, embeddings: torch.Tensor) -> dict[str, list]:
    """zero_shot_attributes for image-like embeddings (N, E), e.g. the prior's samples, which have no image."""
    scenes = all_scenes()
    text_emb = model.encode_text([caption(s) for s in scenes])  # (K, E)
    out: dict[str, list] = {name: [] for name in ATTRIBUTES}
    if len(embeddings) == 0:
        return out
    probs = (model.clamped_scale() * embeddings.to(text_emb) @ text_emb.T).softmax(dim=1)  # (N, K)
    for name in ATTRIBUTES:
        values = sorted({getattr(s, name) for s in scenes}, key=str)
        one_hot = torch.tensor([[getattr(s, name) == v for v in values] for s in scenes],
                               dtype=probs.dtype, device=probs.device)  # (K, V)
        out[name] = [values[i] for i in (probs @ one_hot).argmax(dim=1).tolist()]
    return out


def build(config: CLIPConfig) -> CLIP:
    return CLIP(config)


def save_clip(model: CLIP, path, metrics: dict | None = None, step: int | None = None):
    return checkpoints.save(path, "clip", model.config, model.state_dict(), metrics, step)


def load_clip(path=None, device: str | torch.device = "cpu") -> CLIP:
    """The shipped CLIP (data/checkpoints/clip), or one saved at `path`, in eval mode."""
    model, meta = checkpoints.load_module(path or "clip", "clip", CLIPConfig, build)
    model.metrics = meta.get("metrics", {})
    return model.to(device)
