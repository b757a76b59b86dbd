"""Checks for notebook 09 (a GAN against the decoder): the hinge losses and the projection score."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minidalle.checks._common import _call, _compare, _isolated, _name, _passed


# ----------------------------------------------------------------------------- 09 GAN
@_isolated
def check_hinge_losses(fn) -> None:
    """fn(real_scores (B,), fake_scores (B,)) -> (D's hinge loss, G's hinge loss), two 0-d tensors."""
    __tracebackhide__ = True
    from minidalle.gan import discriminator_loss, generator_loss
    name, g = _name(fn), torch.Generator().manual_seed(0)
    cases = [torch.randn(2, 8, generator=g) * 2, torch.randn(2, 5, generator=g) * 2 + 0.5,
             torch.tensor([[3.0, 2.5, 1.5], [-2.0, -4.0, -1.5]]),  # everything beyond the margin: D's loss is 0
             torch.tensor([[0.5, -1.0, 2.0, 0.0], [-0.5, 1.0, 2.0, -3.0]])]
    for real, fake in cases:
        context = f" for real scores {[round(v, 2) for v in real.tolist()]}, fake scores " \
                  f"{[round(v, 2) for v in fake.tolist()]}"
        real_in, fake_in = real.clone().requires_grad_(True), fake.clone().requires_grad_(True)
        got = _call(fn, real_in, fake_in)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError(f"{name} should return two losses, (D's loss, G's loss), got {type(got).__name__}")
        d_got, g_got = got
        _compare(f"{name}'s D loss", d_got, discriminator_loss(real, fake), context, wrong=[
            (F.relu(1 + real).mean() + F.relu(1 - fake).mean(), "the wrong way round: D must score real images "
             "high (above +1) and fakes low (below -1): relu(1 - D(x)) + relu(1 + D(G(z)))"),
            ((1 - real).mean() + (1 + fake).mean(), "clip each term with relu: a real image already scored above "
             "+1 (a fake below -1) must add nothing; that margin is what makes it a hinge"),
            (F.softplus(-real).mean() + F.softplus(fake).mean(), "that is the original (logistic) GAN loss; the "
             "hinge loss is mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))"),
            (F.relu(1 - real).sum() + F.relu(1 + fake).sum(), "average over the batch (mean), don't sum"),
        ], shape_hint=" (one number: a 0-d tensor)")
        _compare(f"{name}'s G loss", g_got, generator_loss(fake), context, wrong=[
            (F.relu(1 - fake).mean(), "the generator's loss is not clipped: it is -mean(D(G(z))), so G gains from "
             "every higher score, even beyond the margin"),
            (fake.mean(), "wrong sign: G wants D to score its images high, so it minimises -mean(D(G(z)))"),
            (-real.mean(), "the generator's loss is about the scores of its own images (the fakes), not the real ones"),
            (F.softplus(-fake).mean(), "that is the non-saturating logistic loss; with the hinge, G minimises "
             "-mean(D(G(z)))"),
            (-fake.sum(), "average over the batch (mean), don't sum"),
        ], shape_hint=" (one number: a 0-d tensor)")
        if not (torch.is_tensor(d_got) and d_got.requires_grad and g_got.requires_grad):
            raise AssertionError(f"{name}{context}: the losses carry no gradient, so nothing could be trained: stay "
                                 "in torch (no .item(), float() or numpy)")
    _passed(name, "matches minidalle.gan's discriminator_loss and generator_loss")


@_isolated
def check_projection_logit(fn) -> None:
    """fn(features (B, F), embeddings (B, E), psi: F -> 1, project: E -> F) -> scores (B,)."""
    __tracebackhide__ = True
    from minidalle.gan import projection_logit
    name = _name(fn)
    torch.manual_seed(0)
    for B, n_features, E in [(4, 6, 6), (5, 8, 6), (1, 4, 3), (7, 16, 5)]:
        features, embeddings = torch.randn(B, n_features).relu(), F.normalize(torch.randn(B, E), dim=-1)
        psi, project = torch.nn.Linear(n_features, 1), torch.nn.Linear(E, n_features, bias=False)
        context = f" for features ({B}, {n_features}), embeddings ({B}, {E})"
        with torch.no_grad():
            want = projection_logit(features, embeddings, psi, project)
            unconditional, projected = psi(features)[:, 0], project(embeddings)
            wrong = [
                (unconditional, "the condition is missing: add the projection term <V e, phi(x)>, "
                 "(project(embeddings) * features).sum(-1)"),
                ((projected * features).sum(-1), "the unconditional term psi(features) is missing: D must also "
                 "judge whether an image looks real at all, whatever the condition"),
                (unconditional + F.cosine_similarity(projected, features, dim=-1), "an inner product, not a cosine: "
                 "the length of phi(x) carries D's confidence"),
            ]
            if n_features == E:
                wrong.append((unconditional + ((embeddings @ project.weight) * features).sum(-1),
                              "V maps the embedding (E) to the features (F): use project(embeddings), which is "
                              "embeddings @ V.T"))
        got = _call(fn, features, embeddings, psi, project)
        _compare(name, got, want, context, wrong=wrong, shape_hint=(
            f"\n  hint: one score per image, shape ({B},). psi(features) has shape ({B}, 1): squeeze(-1) it "
            f"before adding the ({B},) projection term, or the sum broadcasts to ({B}, {B}); and take the "
            "inner product row by row, (project(embeddings) * features).sum(-1), not a matrix product"))
    _passed(name, "matches minidalle.gan.projection_logit: psi(phi) + <V e, phi>")
