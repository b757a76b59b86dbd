"""References and wrong answers for notebook 06's "build the core" exercises (collected by test_checks.py):
the decoder's training loss for one batch, and a FiLM residual block."""
import torch
import torch.nn.functional as F
from torch import nn

from minidalle import diffusion


# ----------------------------------------------------------------------------- the decoder loss
def decoder_loss(decoder, images, embeddings, generator):
    x0 = images * 2 - 1
    B = len(x0)
    t = torch.randint(0, decoder.config.T, (B,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = diffusion.q_sample(x0, t, noise, decoder.schedule)
    drop = torch.rand(B, generator=generator) < decoder.config.drop_condition
    condition = torch.where(drop[:, None], decoder.unet.null_embedding.expand(B, -1), embeddings)
    target = diffusion.training_target(decoder.config.prediction, decoder.schedule, x0, noise, t)
    return F.mse_loss(decoder.unet(x_t, t, condition), target)


def _loss(decoder, images, embeddings, generator, scale=True, order="t noise drop", drop="below", target=None,
          reduction="mean", detach=False):
    x0 = images * 2 - 1 if scale else images
    B = len(x0)
    draws = {}
    for what in order.split():
        draws[what] = (torch.randint(0, decoder.config.T, (B,), generator=generator) if what == "t" else
                       torch.randn(x0.shape, generator=generator) if what == "noise" else
                       torch.rand(B, generator=generator))
    t, noise, u = draws["t"], draws["noise"], draws["drop"]
    mask = u < decoder.config.drop_condition if drop == "below" else u >= decoder.config.drop_condition
    condition = torch.where(mask[:, None], decoder.unet.null_embedding.expand(B, -1), embeddings) \
        if drop != "none" else embeddings
    goal = diffusion.training_target(target or decoder.config.prediction, decoder.schedule, x0, noise, t)
    prediction = decoder.unet(diffusion.q_sample(x0, t, noise, decoder.schedule), t, condition)
    loss = F.mse_loss(prediction, goal, reduction=reduction)
    return loss.detach() if detach else loss


def _loss_without_the_generator(decoder, images, embeddings, generator):
    return decoder_loss(decoder, images, embeddings, torch.Generator().manual_seed(12345))


# ----------------------------------------------------------------------------- the FiLM block
class FiLMResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, c_in), nn.GroupNorm(8, c_out)
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class _NoResidual(FiLMResBlock):
    def forward(self, x, emb):
        return super().forward(x, emb) - self.skip(x)


class _ScaleWithoutOne(FiLMResBlock):
    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h) * scale + shift))


class _Swapped(FiLMResBlock):
    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        shift, scale = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))


class _NoSiLUOnEmb(FiLMResBlock):
    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))


class _FiLMBeforeNorm(FiLMResBlock):
    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h * (1 + scale) + shift)))


class _AlwaysAConvSkip(FiLMResBlock):
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__(c_in, c_out, emb_dim)
        self.skip = nn.Conv2d(c_in, c_out, 1)


class _OtherNames(nn.Module):
    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.block = FiLMResBlock(c_in, c_out, emb_dim)

    def forward(self, x, emb):
        return self.block(x, emb)


class _Detached(FiLMResBlock):
    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).detach()[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))


REFERENCE = {"check_decoder_loss": decoder_loss, "check_film_block": FiLMResBlock}

WRONG = [  # (check, wrong answer, words the message must contain)
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, scale=False), "images * 2 - 1"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, target="x0"), "training_target"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, drop="none"), "null_embedding"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, drop="above"), "not where it is above"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, order="noise t drop"), "Decoder.loss's order"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, order="t drop noise"), "Decoder.loss's order"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, reduction="sum"), "do not sum"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, reduction="none"), "0-dim tensor"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g, detach=True), "carries no gradient"),
    ("check_decoder_loss", lambda d, i, e, g: _loss(d, i, e, g).item(), "torch.Tensor"),
    ("check_decoder_loss", _loss_without_the_generator, "from `generator`"),
    ("check_film_block", _NoResidual, "residual connection"),
    ("check_film_block", _ScaleWithoutOne, "(1 + scale)"),
    ("check_film_block", _Swapped, "swapped"),
    ("check_film_block", _NoSiLUOnEmb, "SiLU to the conditioning vector"),
    ("check_film_block", _FiLMBeforeNorm, "normalize first"),
    ("check_film_block", _AlwaysAConvSkip, "the skip is nn.Identity()"),
    ("check_film_block", _OtherNames, "named and shaped like ResBlock's"),
    ("check_film_block", _Detached, "different gradient"),
    ("check_film_block", lambda c_in, c_out, emb_dim: (lambda x, emb: x), "torch.nn.Module"),
]
