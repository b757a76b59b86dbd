"""Notebook 03's "build the core" exercise: one CLIP training step up to loss.backward().

REFERENCE is what a student writes; WRONG holds plausible mistakes and words their message must contain.
"""

import torch
import torch.nn.functional as F


def _embed(model, images, captions, normalize=True, dim=-1):
    image = model.image_projection(model.visual(images))  # (B, E)
    ids, mask = model.tokenizer.encode(captions)
    text = model.text_projection(model.text(ids, mask)[1])  # (B, E)
    return (F.normalize(image, dim=dim), F.normalize(text, dim=dim)) if normalize else (image, text)


def _symmetric(logits):
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def clip_training_step(model, optimizer, images, captions):
    optimizer.zero_grad()
    image, text = _embed(model, images, captions)
    loss = _symmetric(model.clamped_scale() * image @ text.T)
    loss.backward()
    return loss


def _step(make_loss, zero_grad=True, backward=True, step=False):
    def wrong(model, optimizer, images, captions):
        if zero_grad:
            optimizer.zero_grad()
        loss = make_loss(model, images, captions)
        if backward:
            loss.backward()
        if step:
            optimizer.step()
        return loss
    return wrong


def _scaled(scale_of, normalize=True, dim=-1, directions="both"):
    def make_loss(model, images, captions):
        image, text = _embed(model, images, captions, normalize, dim)
        logits = scale_of(model) * image @ text.T
        labels = torch.arange(len(logits))
        if directions == "rows":
            return F.cross_entropy(logits, labels)
        if directions == "sum":
            return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
        return _symmetric(logits)
    return make_loss


def _right(model):
    return model.clamped_scale()


def _detached_text(model, images, captions):
    image, text = _embed(model, images, captions)
    return _symmetric(model.clamped_scale() * image @ text.detach().T)


def _backward_on_rows_only(model, optimizer, images, captions):
    optimizer.zero_grad()
    image, text = _embed(model, images, captions)
    logits = model.clamped_scale() * image @ text.T
    F.cross_entropy(logits, torch.arange(len(logits))).backward()  # the right loss, the wrong backward
    return _symmetric(logits)


REFERENCE = {"check_clip_step": clip_training_step}
WRONG = [
    ("check_clip_step", _step(_scaled(_right, normalize=False)), "normalize both embeddings"),
    ("check_clip_step", _step(_scaled(_right, dim=0)), "not each feature across the batch"),
    ("check_clip_step", _step(_scaled(_right, directions="rows")), "only image -> caption"),
    ("check_clip_step", _step(_scaled(_right, directions="sum")), "factor 2"),
    ("check_clip_step", _step(_scaled(lambda m: m.clamped_scale().exp())), "exponentiated twice"),
    ("check_clip_step", _step(_scaled(lambda m: m.logit_scale)), "is the log of the scale"),
    ("check_clip_step", _step(_scaled(lambda m: 1.0)), "multiply the cosines by the scale"),
    ("check_clip_step", _step(_scaled(lambda m: m.logit_scale.exp())), "capped at 100"),
    ("check_clip_step", _step(_scaled(lambda m: m.clamped_scale().item())), "no gradient reached logit_scale"),
    ("check_clip_step", _step(_scaled(_right), backward=False), "call loss.backward()"),
    ("check_clip_step", _step(_scaled(_right), zero_grad=False), "call optimizer.zero_grad() before"),
    ("check_clip_step", _step(_scaled(_right), zero_grad=False, backward=False), "call loss.backward()"),
    ("check_clip_step", _step(_scaled(_right), step=True), "stop after loss.backward()"),
    ("check_clip_step", lambda m, o, i, c: clip_training_step(m, o, i, c).item(), "should return a torch.Tensor"),
    ("check_clip_step", _step(_detached_text), "no gradient reached text"),
    ("check_clip_step", _backward_on_rows_only, "the loss is right but its gradients are not"),
]
