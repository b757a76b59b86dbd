"""Named model sizes for `python -m minidalle train --preset NAME`: the three stages' model
configs and training recipes together.

- `tiny`: a few seconds on a CPU, for tests and smoke runs (not a useful model).
- `default`: the course's 32x32 models and recipes, what the shipped checkpoints used.
- `large`: 64x64 images and wider models, meant for a GPU (its recipe is a starting point:
  it has not been trained to the end here).

The prior and the decoder always follow their CLIP: its embedding width and its image size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from minidalle.clip import CLIPConfig
from minidalle.decoder import DecoderConfig
from minidalle.prior import PriorConfig
from minidalle.train import CLIP_TRAIN, DECODER_TRAIN, PRIOR_TRAIN, TrainConfig
from minidalle.transformer import TextConfig, VisionConfig
from minidalle.unet import UNetConfig


@dataclass(frozen=True)
class Preset:
    """Model configs (None: the training function's own default) and recipes of the three stages."""

    clip: CLIPConfig | None
    prior: PriorConfig | None
    decoder: DecoderConfig | None
    clip_train: TrainConfig
    prior_train: TrainConfig
    decoder_train: TrainConfig

    def prior_for(self, clip) -> PriorConfig | None:
        """The prior's config, with the embedding width of this (trained) CLIP."""
        if self.prior is None:
            return None
        return dataclasses.replace(self.prior, embed_dim=clip.config.embed_dim)

    def decoder_for(self, clip) -> DecoderConfig | None:
        """The decoder's config, with this CLIP's embedding width and image size."""
        size = clip.config.vision.image_size
        if self.decoder is None and size == UNetConfig().image_size:
            return None  # train_decoder's own default, which takes the CLIP's embedding width
        base = self.decoder or DecoderConfig()
        return dataclasses.replace(base, unet=dataclasses.replace(base.unet, embed_dim=clip.config.embed_dim,
                                                                  image_size=size))


TINY_TRAIN = TrainConfig(steps=20, batch_size=16, lr=2e-3, warmup=2, eval_every=20, save_every=20)

PRESETS = {
    "tiny": Preset(CLIPConfig.tiny(), PriorConfig.tiny(), DecoderConfig.tiny(), TINY_TRAIN, TINY_TRAIN,
                   TINY_TRAIN),
    "default": Preset(None, None, None, CLIP_TRAIN, PRIOR_TRAIN, DECODER_TRAIN),
    "large": Preset(
        CLIPConfig(embed_dim=128, cnn_width=64, vision=VisionConfig(image_size=64, patch_size=8, width=256, layers=6,
                                                                    heads=8),
                   text=TextConfig(width=256, layers=4, heads=8)),
        PriorConfig(embed_dim=128, width=384, layers=6, heads=8),
        DecoderConfig(unet=UNetConfig(image_size=64, width=96, mults=(1, 2, 2, 4), blocks=2, heads=8, embed_dim=128)),
        dataclasses.replace(CLIP_TRAIN, steps=3000, batch_size=512, lr=1e-3, warmup=300, eval_every=500,
                            save_every=500),
        dataclasses.replace(PRIOR_TRAIN, steps=5000, batch_size=512, lr=3e-4, warmup=500, eval_every=1000,
                            save_every=1000),
        dataclasses.replace(DECODER_TRAIN, steps=20000, batch_size=128, lr=3e-4, warmup=1000, eval_every=2000,
                            save_every=1000)),
}


def get_preset(name: str) -> Preset:
    """A preset by name, or a ValueError listing the names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
