"""--preset: the default preset is the course's recipe, the prior and decoder follow their
CLIP, and the large preset runs at 64x64."""
import pytest
import torch

from minidalle import train
from minidalle.clip import CLIP, CLIPConfig
from minidalle.decoder import Decoder
from minidalle.presets import get_preset
from minidalle.prior import DiffusionPrior
from minidalle.world import make_dataset


def test_default_preset_is_the_course_recipe():
    preset = get_preset("default")
    assert (preset.clip_train, preset.prior_train, preset.decoder_train) == (train.CLIP_TRAIN, train.PRIOR_TRAIN,
                                                                              train.DECODER_TRAIN)
    clip = CLIP(CLIPConfig())
    assert preset.clip is None and preset.prior_for(clip) is None and preset.decoder_for(clip) is None
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of tiny, default, large"):
        get_preset("huge")


def test_large_preset_works_at_64():
    preset = get_preset("large")
    torch.manual_seed(0)
    clip = CLIP(preset.clip).eval()
    prior, decoder = DiffusionPrior(preset.prior_for(clip)), Decoder(preset.decoder_for(clip))
    images = make_dataset(2, seed=0, image_size=64).images  # (2, 3, 64, 64)
    with torch.no_grad():
        embeddings = clip.encode_image(images)
        assert embeddings.shape == (2, 128)
        assert prior.loss(clip.encode_text(["a red circle", "a square"]), embeddings).isfinite()
        t = torch.tensor([500])
        assert decoder.unet(images[:1] * 2 - 1, t, embeddings[:1]).shape == (1, 3, 64, 64)


def test_tiny_decoder_follows_a_default_clip():
    config = get_preset("tiny").decoder_for(CLIP(CLIPConfig()))
    assert config.unet.embed_dim == 64 and config.unet.image_size == 32 and config.unet.width == 16
