"""Checks for the course's exercises: `check_<exercise>(fn)` tests a student's function.

Each check calls the function on random inputs and edge cases, compares it with the
package's own version, and raises an AssertionError that says *what* is wrong (shape,
normalization, a mask the wrong way round, a factor ...), or prints one line when it passes.
A stub that still raises NotImplementedError is reported as "not implemented yet".
The exercises live in the notebooks, between `### BEGIN SOLUTION` and `### END SOLUTION`.
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

# notebook -> checks, in the order the exercises appear (docs/TEACHERS.md lists them too)
EXERCISES = {
    "00": ("check_caption_of", "check_count_prompts"),
    "01": ("check_attention_weights", "check_causal_mask"),
    "02": ("check_patchify", "check_text_encoder_parameters"),
    "03": ("check_clip_loss", "check_logit_scale"),
    "04": ("check_q_sample", "check_ddim_step"),
    "05": ("check_standardize", "check_best_of_n"),
    "06": ("check_eps_from_x0", "check_guidance"),
    "07": ("check_slerp", "check_text_diff_direction"),
    "08": ("check_rating", "check_entropy"),
}


# ----------------------------------------------------------------------------- helpers
def _isolated(check):
    """Run a check without touching the caller's random state, so the notebook stays reproducible."""
    @functools.wraps(check)
    def run(fn) -> None:
        __tracebackhide__ = True
        with torch.random.fork_rng(devices=[]):
            check(fn)
    return run


def _name(fn) -> str:
    return getattr(fn, "__name__", "your function")


def _describe(value) -> str:
    if torch.is_tensor(value):
        dtype = str(value.dtype).replace("torch.", "")
        return f"{'an' if dtype[0] in 'aeiou' else 'a'} {dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def _call(fn, *args, hint: str = ""):
    """fn(*args); a stub's NotImplementedError becomes "not implemented yet", without the stub's traceback."""
    __tracebackhide__ = True
    try:
        return fn(*args)
    except NotImplementedError:
        pass  # reported below, outside the except block, so that no traceback of the stub comes along
    except Exception as error:  # the student's own traceback stays attached (chained)
        inputs = ", ".join(_describe(a) for a in args)
        raise AssertionError(f"{_name(fn)} raised {type(error).__name__}: {error}\n  called with {inputs}{hint}") \
            from error
    raise AssertionError(f"{_name(fn)} is not implemented yet: write your code in place of "
                         "`raise NotImplementedError()`, run that cell, then run this check again.")


def _passed(name: str, what: str) -> None:
    print(f"✓ {name}: {what}")


def _tensor(name: str, got, want: torch.Tensor, context: str, shape_hint: str = "") -> torch.Tensor:
    """got must be a tensor of want's shape."""
    __tracebackhide__ = True
    if not torch.is_tensor(got):
        raise AssertionError(f"{name} should return a torch.Tensor, got {type(got).__name__}{context}")
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{name} returned the wrong shape{context}: expected {tuple(want.shape)}, "
                             f"got {tuple(got.shape)}{shape_hint}")
    return got


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _compare(name: str, got, want: torch.Tensor, context: str = "", wrong=(), shape_hint: str = "",
             rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Raise an AssertionError saying how got differs from want.

    wrong: (tensor, message) pairs, the results of known mistakes; matching one gives its message.
    """
    __tracebackhide__ = True
    got = _tensor(name, got, want, context, shape_hint)
    if _same(got, want, rtol, atol):
        return
    for value, message in wrong:
        if _same(got, value, rtol, atol):
            raise AssertionError(f"{name}{context}: {message}")
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(g).all():
        raise AssertionError(f"{name} returned NaN or inf{context} (expected finite values)")
    big = w.abs() > 1e-3 * w.abs().max()
    if big.sum() >= 2:
        ratio = g[big] / w[big]
        factor = ratio.mean().item()
        if ratio.std().item() < 1e-3 * abs(factor) and abs(factor) > 1e-6:
            what = "has the wrong sign" if abs(factor + 1) < 1e-3 else f"is off by a factor of {factor:.4g}"
            raise AssertionError(f"{name}{context} {what} (every value is {factor:.4g} x the expected one)")
    i = int((g - w).abs().argmax())
    index = tuple(int(k) for k in np.unravel_index(i, tuple(w.shape))) if w.dim() else ()
    raise AssertionError(f"{name} returned wrong values{context}: largest difference at index {index}, "
                         f"expected {w.flatten()[i].item():.6g}, got {g.flatten()[i].item():.6g}")


def _integer(name: str, got, context: str) -> int:
    __tracebackhide__ = True
    if isinstance(got, bool) or not isinstance(got, numbers.Integral):
        raise AssertionError(f"{name} should return an integer (int), got {type(got).__name__} {got!r}{context}")
    return int(got)


def _gather(alpha_bar: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """alpha_bar[t] as (B, 1, ..., 1) float64, t an int (-1 = clean data) or a (B,) tensor."""
    padded = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar.double()])
    t = torch.full((x.shape[0],), t) if isinstance(t, int) else t
    return padded[t + 1].reshape(-1, *[1] * (x.dim() - 1))


BROADCAST_HINT = ("\n  hint: t holds one timestep per example; reshape alpha_bar[t] from (B,) to (B, 1, ..., 1) "
                  "so that it broadcasts over x of any shape, e.g. .view(-1, *[1] * (x.dim() - 1))")


# ----------------------------------------------------------------------------- 00 shapes world
def _all_prompts():
    from minidalle.world import COLORS, POSITIONS, SHAPES, SIZES, Attributes
    colors = [(None, None, None)] + [(c, False, None) for c in COLORS] + [(None, True, None)]
    colors += [(c, True, None) for c in COLORS] + [(c, True, c2) for c in COLORS for c2 in COLORS if c2 != c]
    return [Attributes(shape, c, st, c2, size, pos) for shape in SHAPES for c, st, c2 in colors
            for size in (None,) + SIZES for pos in (None,) + POSITIONS]


def _caption_problem(attrs, got: str, want: str) -> str:
    words, right = got.split(), want.split()
    if any(w in ("None", "True", "False") for w in words):
        return ("an attribute left open (None) is simply not said, and the pattern is said with the word "
                "'striped' (or nothing), never 'True'/'False'")
    if words == right:
        return "right words, but the spacing is off: join the words with single spaces"
    if attrs.striped and "striped" not in words:
        return "a striped object needs the word 'striped' (a bare colour means solid)"
    if not attrs.striped and "striped" in words:
        return "only a striped object says 'striped'"
    if attrs.position is not None and "the" not in words:
        return "places read 'on the left|right|top|bottom' or 'in the center': you left out 'the'"
    if attrs.position == "center" and "in" not in words:
        return "the centre is 'in the center', the other places 'on the ...'"
    if sorted(words) == sorted(right):
        if attrs.color2 is not None and words.index(attrs.color2) < words.index(attrs.color):
            return f"the main colour comes first: '{attrs.color} and {attrs.color2} striped'"
        return "right words, wrong order: captions read 'a {size} {colors} {shape} {where}'"
    return "see the grammar at the top of the notebook: 'a {size} {colors} {shape} {where}'"


@_isolated
def check_caption_of(fn) -> None:
    """fn(attrs: Attributes) -> str, the caption of a full scene or a partial prompt (as world.caption)."""
    __tracebackhide__ = True
    from minidalle.world import all_scenes, caption
    name, scenes, prompts = _name(fn), all_scenes(), _all_prompts()
    for kind, items in (("full scene", scenes), ("prompt (None = left open)", prompts)):
        for attrs in items:
            got, want = _call(fn, attrs), caption(attrs)
            if not isinstance(got, str):
                raise AssertionError(f"{name} should return a string, got {type(got).__name__} for {attrs!r}")
            if got != want:
                raise AssertionError(f"{name} is wrong for the {kind} {attrs!r}:\n  expected {want!r}\n"
                                     f"  got      {got!r}\n  {_caption_problem(attrs, got, want)}")
    _passed(name, f"right for all {len(scenes)} full scenes and all {len(prompts)} prompts of the grammar")


def _prompt_count(shapes: int, colors: int, sizes: int, positions: int) -> int:
    # colour part: none, a solid colour, "striped", "<color> striped", "<color> and <other> striped"
    return shapes * (2 + 2 * colors + colors * (colors - 1)) * (sizes + 1) * (positions + 1)


@_isolated
def check_count_prompts(fn) -> None:
    """fn(n_shapes, n_colors, n_sizes, n_positions) -> number of distinct prompts (full and partial)."""
    __tracebackhide__ = True
    name = _name(fn)
    for S, C, Z, P in [(4, 7, 2, 5), (1, 1, 1, 1), (2, 3, 1, 2), (3, 5, 3, 4), (5, 8, 2, 5)]:
        context = f" for a world of {S} shapes, {C} colours, {Z} sizes and {P} positions"
        got, want = _integer(name, _call(fn, S, C, Z, P), context), _prompt_count(S, C, Z, P)
        if got == want:
            continue
        pairs, rest = C * (C - 1), (Z + 1) * (P + 1)
        known = [
            (S * (1 + 2 * C + pairs) * rest, "one colour option per shape is missing: both 'no colour word at all' "
             "('a circle') and a bare 'striped' ('a striped circle') are prompts"),
            (S * (2 + C + pairs) * rest, "'<color> striped' ('a red striped circle': stripe colour left open) is missing"),
            (S * (2 + 2 * C + pairs // 2) * rest, "striped pairs are ordered: 'red and green striped' and "
             "'green and red striped' are different prompts"),
            (S * (2 + 2 * C + C * C) * rest, "the two colours of a striped pair must differ"),
            (S * (2 + 2 * C + pairs) * Z * P, "size and position may also be left unsaid: each has one option more "
             "than it has words"),
            (S * (2 + 2 * C + pairs) * Z * (P + 1), "the size may also be left unsaid (one option more than words)"),
            (S * (2 + 2 * C + pairs) * (Z + 1) * P, "the position may also be left unsaid (one option more than words)"),
            (S * C * C * Z * P, "that is the number of full scenes; count the partial prompts too"),
        ]
        hint = next((message for value, message in known if value == got), "see the table of section 3")
        raise AssertionError(f"{name} is wrong{context}: expected {want}, got {got}\n  {hint}")
    _passed(name, f"{_prompt_count(4, 7, 2, 5)} prompts in our world, and right for 4 other world sizes")


# ----------------------------------------------------------------------------- 01 attention
@_isolated
def check_attention_weights(fn) -> None:
    """fn(q (..., T, d), k (..., S, d)) -> softmax(q k^T / sqrt(d)) over the keys, (..., T, S)."""
    __tracebackhide__ = True
    from minidalle.attention import scaled_dot_product_attention
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for q_shape, k_shape in [((5, 16), (7, 16)), ((2, 3, 4, 64), (2, 3, 6, 64)), ((1, 8, 8), (1, 8, 8)),
                             ((3, 1), (2, 1))]:
        q, k = torch.randn(q_shape, generator=g), torch.randn(k_shape, generator=g)
        want = scaled_dot_product_attention(q, k, k)[1]
        d, scores = q.shape[-1], q @ k.transpose(-2, -1)
        context = f" for q of shape {q_shape} and k of shape {k_shape}"
        got = _call(fn, q, k)
        if torch.is_tensor(got) and got.shape != want.shape and got.shape == want.transpose(-2, -1).shape:
            raise AssertionError(f"{name}{context} returned shape {tuple(got.shape)}, expected {tuple(want.shape)}: "
                                 "rows are queries (T) and columns keys (S), so use q @ k.transpose(-2, -1)")
        if torch.is_tensor(got) and got.shape == want.shape and not torch.allclose(
                got.detach().double().sum(-1), torch.ones(()).double(), atol=1e-4):
            if _same(got, (scores / math.sqrt(d)).softmax(-2)):
                raise AssertionError(f"{name}{context}: the softmax runs over the wrong dimension: each query's "
                                     "weights (a row) must sum to 1 over the keys, so use softmax(dim=-1)")
            raise AssertionError(f"{name}{context}: the weights of each query (a row) must sum to 1 over the keys; "
                                 "yours do not (a softmax over the last dimension does that)")
        _compare(name, got, want, context, wrong=[
            (scores.softmax(-1), f"the scores are not scaled: divide q k^T by sqrt(d) = {math.sqrt(d):.4g} "
             "before the softmax"),
            ((scores / d).softmax(-1), f"divide by sqrt(d) = {math.sqrt(d):.4g}, not by d = {d}"),
            ((scores * math.sqrt(d)).softmax(-1), "divide by sqrt(d), don't multiply"),
        ])
    _passed(name, "matches minidalle.attention on batched, rectangular (T != S) and tiny inputs")


@_isolated
def check_causal_mask(fn) -> None:
    """fn(T, S) -> boolean (T, S): True where query i may attend to key j (keys aligned at the end)."""
    __tracebackhide__ = True
    from minidalle.attention import combine_masks
    name = _name(fn)
    for T, S in [(4, 4), (7, 7), (1, 1), (3, 5), (1, 4), (2, 6), (5, 3)]:
        want, context = combine_masks(None, True, T, S, "cpu"), f" for T={T} queries and S={S} keys"
        got = _call(fn, T, S)
        if torch.is_tensor(got) and got.dtype != torch.bool:
            raise AssertionError(f"{name}{context} returned a {str(got.dtype).replace('torch.', '')} tensor: a mask "
                                 "is boolean (dtype=torch.bool), True = may attend")
        got = _tensor(name, got, want, context)
        if torch.equal(got, want):
            continue
        ones = torch.ones(T, S, dtype=torch.bool)
        known = [
            (~want, "True and False are swapped: in this course True means 'may attend' (PyTorch's "
             "nn.MultiheadAttention masks use the opposite convention)"),
            (ones.triu(S - T), "the mask is the wrong way round: query i (a row) may look at keys up to its own "
             "position (lower triangle, tril), yours lets queries see the future (upper triangle)"),
            (ones.tril(S - T - 1), "each token must also see itself: keep the diagonal"),
            (ones.tril(), "queries and keys are aligned at the end (the last query sees every key): query i sits at "
             "position i + S - T among the keys, so use tril(diagonal=S - T)"),
        ]
        hint = next((message for value, message in known if torch.equal(got, value)), None)
        if hint is None:
            hint = f"expected\n{want.int()}\n  got\n{got.int()}"
        raise AssertionError(f"{name}{context}: {hint}")
    _passed(name, "right for T = S, for S > T (cached keys) and for S < T, True = may attend")


# ----------------------------------------------------------------------------- 02 transformers
@_isolated
def check_patchify(fn) -> None:
    """fn(images (B, 3, S, S), p) -> patches (B, (S/p)^2, 3 p p), row by row, each flattened as (3, p, p)."""
    __tracebackhide__ = True
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, S, p in [(2, 32, 4), (1, 32, 8), (3, 16, 2), (1, 12, 3)]:
        images = torch.rand(B, 3, S, S, generator=g)
        grid = images.unfold(2, p, p).unfold(3, p, p)  # (B, 3, S/p, S/p, p, p)
        n = (S // p) ** 2

        def flat(*order):
            return grid.permute(*order).reshape(B, n, 3 * p * p)

        want = flat(0, 2, 3, 1, 4, 5)
        context = f" for images of shape {(B, 3, S, S)} and p={p}"
        _compare(name, _call(fn, images, p), want, context, wrong=[
            (flat(0, 3, 2, 1, 4, 5), "the patches are in the wrong order: number them row by row, left to right "
             "(patch index = grid_row * (S // p) + grid_col)"),
            (flat(0, 2, 3, 4, 5, 1), "flatten each patch channel first, as (3, p, p), the layout of Conv2d's "
             "weight (out, 3, p, p); yours keeps the 3 colours of a pixel together"),
            (flat(0, 2, 3, 1, 5, 4), "inside a patch the pixels go row by row: (channel, pixel row, pixel column)"),
            (flat(0, 3, 2, 1, 5, 4), "rows and columns are swapped (the image is read transposed): images are "
             "(B, C, height, width), so dim 2 runs over rows and dim 3 over columns"),
            (images.reshape(B, n, 3 * p * p), "a patch is a p x p square of the image; a plain reshape takes runs "
             "of consecutive pixels instead (use unfold, or view + permute)"),
        ], shape_hint=f"\n  hint: {n} patches of 3*{p}*{p} = {3 * p * p} numbers each")
    # The point of the layout: a linear layer on the patches is the ViT's patch-embedding convolution.
    conv = torch.nn.Conv2d(3, 8, 4, stride=4)
    images = torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        linear = _call(fn, images, 4) @ conv.weight.reshape(8, -1).T + conv.bias
        _compare(name, linear, conv(images).flatten(2).transpose(1, 2), " (as a patch embedding)")
    _passed(name, "right order and layout; a linear layer on your patches equals the ViT's Conv2d patch embedding")


@_isolated
def check_text_encoder_parameters(fn) -> None:
    """fn(vocab_size, context_length, width, layers, mlp_ratio) -> number of parameters of a TextEncoder."""
    __tracebackhide__ = True
    from minidalle.transformer import TextConfig, TextEncoder
    name = _name(fn)
    for V, L, M, layers, heads, r in [(28, 16, 96, 2, 4, 4), (28, 16, 32, 1, 2, 4), (100, 8, 64, 3, 4, 2),
                                      (5, 3, 8, 0, 2, 4)]:
        context = (f" for vocab_size={V}, context_length={L}, width={M}, layers={layers}, mlp_ratio={r}")
        got = _integer(name, _call(fn, V, L, M, layers, r), context)
        want = sum(p.numel() for p in TextEncoder(TextConfig(V, L, M, layers, heads, r)).parameters())
        if got == want:
            continue
        gap = want - got
        known = {2 * M: "the final LayerNorm (a weight and a bias: 2 * width) is missing",
                 L * M: "the position embedding (context_length * width) is missing",
                 V * M: "the token embedding (vocab_size * width) is missing",
                 layers * 4 * M: "each block has two LayerNorms of 2 * width each",
                 layers * (5 + r) * M: "the biases of the linear layers are missing (4 * width in attention, "
                 "(mlp_ratio + 1) * width in the MLP)",
                 layers * ((4 + 2 * r) * M * M + (9 + r) * M): "the blocks are missing"}
        hint = known.get(gap, f"yours is {'short' if gap > 0 else 'over'} by {abs(gap)}; count embeddings, "
                         "blocks (attention, MLP, 2 LayerNorms) and the final LayerNorm")
        raise AssertionError(f"{name} is wrong{context}: expected {want}, got {got}\n  {hint}")
    _passed(name, "matches the parameter count of minidalle's TextEncoder for 4 configurations")


# ----------------------------------------------------------------------------- 03 CLIP
@_isolated
def check_clip_loss(fn) -> None:
    """fn(image_features (B, E), text_features (B, E), logit_scale) -> symmetric InfoNCE loss (0-d)."""
    __tracebackhide__ = True
    from minidalle.clip import contrastive_loss
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, E, scale in [(8, 16, 1 / 0.07), (5, 8, 100.0), (16, 32, 1.0), (1, 4, 10.0)]:
        image = F.normalize(torch.randn(B, E, generator=g), dim=-1)
        text = F.normalize(torch.randn(B, E, generator=g), dim=-1)
        logit_scale = torch.tensor(scale)
        want = contrastive_loss(image, text, logit_scale)
        logits, labels = scale * image @ text.T, torch.arange(B)
        rows, cols = F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)
        context = f" for a batch of B={B} pairs, logit_scale={scale:.4g}"
        cos = image @ text.T
        _compare(name, _call(fn, image, text, logit_scale), want, context, wrong=[
            (rows, "only image -> text: CLIP averages the cross-entropy over rows (image -> text) and over "
             "columns (text -> image)"),
            (cols, "only text -> image: CLIP averages the cross-entropy over rows (image -> text) and over "
             "columns (text -> image)"),
            (rows + cols, "off by a factor 2: average the two directions, don't add them"),
            ((F.cross_entropy(cos, labels) + F.cross_entropy(cos.T, labels)) / 2,
             "multiply the cosine similarities by logit_scale before the softmax"),
            ((F.cross_entropy(math.exp(scale) * cos, labels) + F.cross_entropy(math.exp(scale) * cos.T, labels)) / 2,
             "logit_scale is already exponentiated here (as in open_clip): don't exp it again"),
            ((F.cross_entropy(logits, labels, reduction="sum") + F.cross_entropy(logits.T, labels, reduction="sum"))
             / 2, f"off by a factor B={B}: average the cross-entropy over the batch, don't sum it"),
        ], shape_hint=" (one number: a 0-d tensor, averaged over the batch)")
    _passed(name, "matches minidalle.clip.contrastive_loss (symmetric, scaled, averaged)")


@_isolated
def check_logit_scale(fn) -> None:
    """fn(log_scale 0-d tensor) -> exp(log_scale) capped at 100, differentiable below the cap."""
    __tracebackhide__ = True
    from minidalle.clip import MAX_LOGIT_SCALE
    name = _name(fn)
    for value in [math.log(1 / 0.07), 0.0, -1.0, math.log(100) - 0.01, math.log(100) + 0.01, 5.0, 10.0]:
        log_scale = torch.tensor(value, requires_grad=True)
        context = f" for log_scale = {value:.4g}"
        got = _call(fn, log_scale)
        want = log_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE)
        x = log_scale.detach()
        _compare(name, got, want, context, wrong=[
            (x.clamp(max=MAX_LOGIT_SCALE), "logit_scale is stored as a log: exponentiate it (the scale is exp(log_scale))"),
            (x.clamp(max=MAX_LOGIT_SCALE).exp(), "cap the scale itself at 100 (that is log_scale at log 100 = 4.61), "
             "not the log at 100"),
            (x.exp().clamp(max=math.log(MAX_LOGIT_SCALE)), "the cap is 100 on the scale (temperature >= 1/100), "
             "not log 100"),
            ((-x).exp(), "that is the temperature; the scale that multiplies the cosines is its inverse, exp(log_scale)"),
            (x.exp().clamp(min=MAX_LOGIT_SCALE), "use clamp(max=100): the scale may not exceed 100"),
        ], shape_hint=" (one number, like log_scale)")
        if value < math.log(100) - 1e-3:
            if not got.requires_grad:
                raise AssertionError(f"{name}{context}: the result carries no gradient, so training could not learn "
                                     "the temperature: stay in torch (no .item(), math.exp or float())")
            got.backward()
            if log_scale.grad is None or not math.isclose(log_scale.grad.item(), math.exp(value), rel_tol=1e-4):
                raise AssertionError(f"{name}{context}: below the cap the gradient d scale / d log_scale must be "
                                     f"exp(log_scale) = {math.exp(value):.4g}, got {log_scale.grad}")
    _passed(name, "exp(log_scale), capped at 100, with the gradient flowing below the cap")


# ----------------------------------------------------------------------------- 04 diffusion
@_isolated
def check_q_sample(fn) -> None:
    """fn(x0 (B, ...), t (B,) long, noise (B, ...), alpha_bar (T,)) -> x_t (Ho et al. 2020, eq. 4)."""
    __tracebackhide__ = True
    from minidalle.diffusion import make_schedule, q_sample
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for kind, T, shape in [("cosine", 1000, (16, 2)), ("linear", 50, (5, 7)), ("cosine", 1000, (4, 3, 8, 8))]:
        schedule = make_schedule(kind, T)
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.randint(0, T, (shape[0],), generator=g)
        t[0], t[-1] = 0, T - 1
        want = q_sample(x0, t, noise, schedule)
        a = _gather(schedule.alpha_bar, t, x0)
        a_prev = _gather(schedule.alpha_bar, t - 1, x0)
        context = f" for x0 of shape {shape}, {kind} schedule with T={T}"
        got = _call(fn, x0, t, noise, schedule.alpha_bar, hint=BROADCAST_HINT if len(shape) > 2 else "")
        _compare(name, got, want, context, wrong=[
            (a * x0 + (1 - a) * noise, "eq. 4 takes square roots: sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise"),
            (a.sqrt() * noise + (1 - a).sqrt() * x0, "x0 and noise are swapped: the signal x0 is scaled by "
             "sqrt(alpha_bar), the noise by sqrt(1 - alpha_bar)"),
            (a.sqrt() * x0 + (1 - a.sqrt()) * noise, "the noise is scaled by sqrt(1 - alpha_bar), not 1 - sqrt(alpha_bar)"),
            (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise, "off by one step: use alpha_bar[t], the signal left "
             "after step t (t = 0 is the first step)"),
            (a[:1].sqrt() * x0 + (1 - a[:1]).sqrt() * noise, "every example has its own timestep t[i]: gather "
             "alpha_bar[t] (shape (B,)), not one value for the whole batch"),
        ])
    _passed(name, "matches minidalle.diffusion.q_sample for points and images, both schedules, t = 0 .. T-1")


@_isolated
def check_ddim_step(fn) -> None:
    """fn(x_t, eps, t: int, t_prev: int, alpha_bar (T,)) -> x_{t_prev}, DDIM with eta = 0; t_prev = -1 is clean."""
    __tracebackhide__ = True
    from minidalle.diffusion import ddim_step, make_schedule
    name, g = _name(fn), torch.Generator().manual_seed(0)
    cases = [("cosine", 1000, 520, 500, (6, 2)), ("cosine", 1000, 999, 979, (2, 3, 4, 4)), ("linear", 100, 99, 89, (5, 2)),
             ("linear", 100, 40, 20, (3, 5)), ("cosine", 1000, 0, -1, (6, 2)), ("linear", 100, 9, -1, (4, 3))]
    for kind, T, t, t_prev, shape in cases:
        schedule = make_schedule(kind, T)
        x_t = torch.randn(shape, generator=g, dtype=torch.float64)
        eps = torch.randn(shape, generator=g, dtype=torch.float64)
        want = ddim_step(schedule, x_t, eps, t, t_prev)
        a, a_prev = schedule.alpha_bar[t].item(), (schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0)
        x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        last = schedule.alpha_bar[-1].item()
        context = f" for t={t}, t_prev={t_prev} ({kind} schedule, T={T})"
        _compare(name, _call(fn, x_t, eps, t, t_prev, schedule.alpha_bar), want, context, wrong=[
            (math.sqrt(last) * x0 + math.sqrt(1 - last) * eps, "at t_prev = -1 (the jump to clean data) alpha_bar_prev "
             "is 1; in Python alpha_bar[-1] is the schedule's *last* value (almost 0)"),
            (math.sqrt(a_prev) * x0 + math.sqrt(1 - a) * eps, "the direction term uses the previous noise level: "
             "sqrt(1 - alpha_bar_prev) * eps"),
            (x0, "that is the predicted x0; the step returns sqrt(alpha_bar_prev) * x0 + sqrt(1 - alpha_bar_prev) * eps"),
            (a_prev * x0 + (1 - a_prev) * eps, "eq. 12 takes square roots: sqrt(alpha_bar_prev) and "
             "sqrt(1 - alpha_bar_prev)"),
        ], rtol=1e-5)
    _passed(name, "matches minidalle.diffusion.ddim_step (eta = 0), including the last jump to t_prev = -1")


# ----------------------------------------------------------------------------- 05 prior
@_isolated
def check_best_of_n(fn) -> None:
    """fn(candidates (B, N, E), text (B, E), both unit-norm) -> the candidate closest to each text, (B, E)."""
    __tracebackhide__ = True
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, N, E in [(4, 3, 16), (3, 5, 8), (1, 1, 4), (6, 2, 32)]:
        candidates = F.normalize(torch.randn(B, N, E, generator=g), dim=-1)
        text = F.normalize(torch.randn(B, E, generator=g), dim=-1)
        scores = (candidates * text[:, None]).sum(dim=-1)  # (B, N), as DiffusionPrior.sample
        rows = torch.arange(B)
        want = candidates[rows, scores.argmax(dim=1)]
        context = f" for B={B} prompts with N={N} candidates of width E={E}"
        got = _call(fn, candidates, text)
        if torch.is_tensor(got) and got.shape == (B,) and not got.is_floating_point():
            raise AssertionError(f"{name}{context} returned indices: return the chosen embeddings (B, E), "
                                 "not their indices")
        _compare(name, got, want, context, wrong=[
            (candidates[rows, scores.argmin(dim=1)], "you kept the *least* similar candidate: use argmax"),
            (candidates[:, 0], "you kept the first candidate: keep the one with the highest cosine to its text"),
        ], shape_hint="\n  hint: pick one row per prompt: candidates[torch.arange(B), best]")
    _passed(name, "keeps the candidate with the highest cosine to its text, as DiffusionPrior.sample")


@_isolated
def check_standardize(fn) -> None:
    """fn(embeddings (B, E)) -> (standardized (B, E), mean (E,), std 0-d): DiffusionPrior.set_statistics."""
    __tracebackhide__ = True
    from minidalle.prior import DiffusionPrior, PriorConfig
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, E in [(64, 16), (256, 32), (2, 4)]:
        x = torch.randn(B, E, generator=g) * torch.linspace(0.2, 3, E) + torch.linspace(-1, 1, E)
        prior = DiffusionPrior(PriorConfig(embed_dim=E, width=8, layers=0, heads=1, T=10))
        prior.set_statistics(x)
        mean, std = prior.mean, prior.std
        context = f" for embeddings of shape {(B, E)}"
        got = _call(fn, x)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise AssertionError(f"{name}{context} should return three things: (standardized, mean, std)")
        z, got_mean, got_std = got
        if torch.is_tensor(got_mean) and got_mean.numel() == 1 and E > 1:
            raise AssertionError(f"{name}{context}: the mean is one value per dimension, shape ({E},): mean(dim=0)")
        _compare(name, got_mean, mean, context + " (the mean)")
        if torch.is_tensor(got_std) and got_std.numel() == E and E > 1:
            raise AssertionError(f"{name}{context}: use one std for all dimensions (a scalar: the per-dimension stds "
                                 "averaged); a std per dimension would stretch some directions more than others")
        if not isinstance(got_std, numbers.Real) and not (torch.is_tensor(got_std) and got_std.numel() == 1):
            raise AssertionError(f"{name}{context}: the std should be one number (a 0-d tensor), got {_describe(got_std)}")
        centered = x - mean
        _compare(name, torch.as_tensor(got_std).reshape(()), std, context + " (the std)", wrong=[
            (centered.std(), "average the per-dimension stds, (x - mean).std(dim=0).mean(); the std of all numbers "
             "at once is a different quantity"),
            (centered.std(dim=0, unbiased=False).mean(), "use torch's default (unbiased) std, as the package does"),
        ])
        _compare(name, z, centered / std, context + " (the standardized embeddings)", wrong=[
            (x / std, "subtract the mean before dividing by the std"),
            (centered * std, "divide by the std, don't multiply"),
        ])
    _passed(name, "same mean and std as DiffusionPrior.set_statistics, and the standardized embeddings")


# ----------------------------------------------------------------------------- 06 decoder
@_isolated
def check_guidance(fn) -> None:
    """fn(cond, uncond, guidance) -> classifier-free guidance mix, as Decoder.guided."""
    __tracebackhide__ = True
    from minidalle.decoder import Decoder, DecoderConfig
    name = _name(fn)
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig.tiny()).eval()
    x_t = torch.randn(3, 3, 32, 32)
    t = torch.tensor([5, 50, 90])
    embeddings = F.normalize(torch.randn(3, decoder.config.unet.embed_dim), dim=-1)
    with torch.no_grad():
        cond = decoder.unet(x_t, t, embeddings)
        uncond = decoder.unet(x_t, t, decoder.unet.null_embedding.expand_as(embeddings))
        for guidance in [1.0, 0.0, 3.0, 7.5, 0.5]:
            want = decoder.guided(x_t, t, embeddings, guidance)
            context = f" at guidance {guidance}"
            got = _call(fn, cond, uncond, guidance)
            wrong = [
                (cond + guidance * (cond - uncond), "that is the (1 + w) convention; here guidance g = 1 means no "
                 "guidance: uncond + g * (cond - uncond)"),
                (uncond + guidance * (uncond - cond), "the mix goes the wrong way: it must move from the unconditional "
                 "prediction towards (and past) the conditional one"),
            ]
            for value, message in wrong:
                if torch.is_tensor(got) and got.shape == value.shape and _same(got, value) and not _same(got, want):
                    raise AssertionError(f"{name}{context}: {message}")
            if guidance == 1.0 and torch.is_tensor(got) and got.shape == cond.shape and not _same(got, cond):
                raise AssertionError(f"{name}{context}: guidance 1 means plain conditional sampling, so the mix must "
                                     "equal the conditional prediction")
            if guidance == 0.0 and torch.is_tensor(got) and got.shape == cond.shape and not _same(got, uncond):
                raise AssertionError(f"{name}{context}: guidance 0 must give the unconditional prediction")
            _compare(name, got, want, context)
    _passed(name, "matches Decoder.guided for guidance 0, 0.5, 1, 3 and 7.5")


@_isolated
def check_eps_from_x0(fn) -> None:
    """fn(x_t (B, ...), t (B,) long, x0 (B, ...), alpha_bar (T,)) -> the noise eps (eq. 4 solved for eps)."""
    __tracebackhide__ = True
    from minidalle.diffusion import make_schedule, predict_eps_from_x0
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for kind, T, shape in [("cosine", 1000, (6, 2)), ("linear", 100, (5, 7)), ("cosine", 1000, (4, 3, 8, 8))]:
        schedule = make_schedule(kind, T)
        x_t = torch.randn(shape, generator=g, dtype=torch.float64)
        x0 = torch.randn(shape, generator=g, dtype=torch.float64).clamp(-1, 1)
        t = torch.randint(0, T, (shape[0],), generator=g)
        t[0], t[-1] = 0, T - 1
        want = predict_eps_from_x0(schedule, x_t, t, x0)
        a = _gather(schedule.alpha_bar, t, x_t)
        context = f" for x_t of shape {shape}, {kind} schedule with T={T}"
        got = _call(fn, x_t, t, x0, schedule.alpha_bar, hint=BROADCAST_HINT if len(shape) > 2 else "")
        _compare(name, got, want, context, wrong=[
            ((x_t - a * x0) / (1 - a), "eq. 4 takes square roots: eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)"),
            ((x_t - a.sqrt() * x0) / a.sqrt(), "divide by sqrt(1 - alpha_bar), the scale of the noise in x_t"),
            (x_t - a.sqrt() * x0, "divide by sqrt(1 - alpha_bar): x_t holds sqrt(1 - alpha_bar) * eps, not eps"),
            ((x_t - (1 - a).sqrt() * x0) / a.sqrt(), "that solves for x0; solve eq. 4 for eps instead"),
        ], rtol=1e-5)
    _passed(name, "matches minidalle.diffusion.predict_eps_from_x0 for points and images, t = 0 .. T-1")


# ----------------------------------------------------------------------------- 07 unCLIP
@_isolated
def check_slerp(fn) -> None:
    """fn(a (N, E), b (N, E) unit vectors, weight: float) -> spherical interpolation (N, E)."""
    __tracebackhide__ = True
    from minidalle.pipeline import slerp
    name, g = _name(fn), torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    b = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    for weight in [0.3, 0.5, 0.0, 1.0, 0.9]:
        context = f" at weight {weight}"
        lerp = (1 - weight) * a + weight * b
        _compare(name, _call(fn, a, b, weight), slerp(a, b, weight), context, wrong=[
            (lerp, "that is linear interpolation: between two unit vectors its points are shorter than 1 (inside "
             "the sphere); slerp moves along the sphere"),
            (F.normalize(lerp, dim=-1), "normalized linear interpolation: on the sphere, but it moves at uneven speed; "
             "in slerp the angle from a grows linearly with the weight: "
             "(sin((1 - w) theta) a + sin(w theta) b) / sin(theta)"),
            (slerp(b, a, weight), "a and b are swapped: weight 0 must give a, weight 1 must give b"),
        ])
    same = _call(fn, a[:2], a[:2].clone(), 0.5)
    if torch.is_tensor(same) and not torch.isfinite(same).all():
        raise AssertionError(f"{name} returns NaN when a == b: rounding can push the cosine a little past 1, so clamp "
                             "it into [-1, 1] (slightly inside) before acos")
    _compare(name, same, a[:2], " when a == b (it must return a)", atol=1e-3)
    _passed(name, "matches minidalle.pipeline.slerp, ends included, and survives a == b")


@_isolated
def check_text_diff_direction(fn) -> None:
    """fn(text_from (..., E), text_to (..., E)) -> unit direction from the first text to the second."""
    __tracebackhide__ = True
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for shape in [(16,), (4, 16), (3, 64)]:
        start = F.normalize(torch.randn(shape, generator=g), dim=-1)
        end = F.normalize(torch.randn(shape, generator=g), dim=-1)
        want = F.normalize(end - start, dim=-1)  # as UnCLIP.text_diff
        context = f" for text embeddings of shape {shape}"
        _compare(name, _call(fn, start, end), want, context, wrong=[
            (F.normalize(start - end, dim=-1), "the direction is the wrong way round: from the 'from' text to the "
             "'to' text is to - from"),
            (end - start, "normalize the difference to unit length (F.normalize(..., dim=-1))"),
            (F.normalize(end - start, dim=0), "normalize each row, over the embedding dimension (dim=-1)"),
        ])
    _passed(name, "the unit direction to - from, as UnCLIP.text_diff uses it")


# ----------------------------------------------------------------------------- 08 evaluation
def _rating_cases():
    from minidalle.world import Attributes, random_caption_variant, sample_scenes
    A = Attributes
    red_circle = A("circle", "red", False, None, "large", "left")
    cases = [(red_circle, "a circle"), (red_circle, "a square"), (red_circle, "a red circle"),
             (red_circle, "a blue circle"), (A("circle", "red", True, "green", "large", "left"), "a red circle"),
             (red_circle, "a small blue circle on the right"), (red_circle, "a red square"),
             (red_circle, "a blue square"), (A("circle", "red", True, "green", "small", "top"), "a red striped circle"),
             (red_circle, "a striped circle"), (A("circle", "red", True, "blue", "small", "top"),
                                                "a red and green striped circle"),
             (A("circle", "green", True, "red", "small", "top"), "a red and green striped circle")]
    rng = np.random.default_rng(0)
    judged, other = sample_scenes(300, "all", rng), sample_scenes(300, "all", rng)
    for i, (scene, prompt_scene) in enumerate(zip(judged, other)):
        cases.append((scene, random_caption_variant(scene if i % 3 == 0 else prompt_scene, rng)))
    return cases


@_isolated
def check_rating(fn) -> None:
    """fn(judged: Attributes, prompt: str) -> the course's 1-5 rating, as evaluate.rating_1_to_5."""
    __tracebackhide__ = True
    from minidalle.evaluate import rating_1_to_5
    from minidalle.world import parse_prompt
    name = _name(fn)
    cases = _rating_cases()
    for judged, prompt in cases:
        got, want = _call(fn, judged, prompt), rating_1_to_5([judged], [prompt])[0]
        context = f" for the prompt {prompt!r} and an image judged as {judged!r}"
        got = _integer(name, got, context)
        if got == want:
            continue
        asked = parse_prompt(prompt)
        said = {n: getattr(asked, n) for n in ("shape", "color", "striped", "color2", "size", "position")
                if getattr(asked, n) is not None}
        wrong = [n for n, v in said.items() if getattr(judged, n) != v]
        reason = {5: "everything the prompt asks for is right", 1: "nothing the prompt asks for is right",
                  2: "the shape is wrong but some detail is right",
                  4: f"the shape is right and exactly one detail is wrong ({', '.join(wrong)})",
                  3: f"the shape is right and {len(wrong)} details are wrong ({', '.join(wrong)})"}[want]
        raise AssertionError(
            f"{name} gave {got}{context}; the rubric gives {want}: {reason}.\n  The prompt asks only for "
            f"{said}; what it leaves open is not judged (a solid prompt's 'no stripes' is judged once, by striped)")
    _passed(name, f"agrees with evaluate.rating_1_to_5 on {len(cases)} (image, prompt) pairs")


@_isolated
def check_entropy(fn) -> None:
    """fn(values: list) -> entropy in bits of how often each value occurs, as evaluate.variety."""
    __tracebackhide__ = True
    from minidalle.evaluate import variety
    from minidalle.world import COLORS, Attributes
    name, rng = _name(fn), np.random.default_rng(0)
    cases = [["red"] * 8, ["red", "blue"] * 4, ["red", "blue", "green", "white"] * 2, ["red"] * 3 + ["blue"],
             [str(c) for c in rng.choice(COLORS, 50)], [None, "red", None, None, "blue"], list(COLORS)]
    for values in cases:
        want = variety([Attributes("circle", v) for v in values], "color")
        context = f" for {values!r}" if len(values) <= 8 else f" for {len(values)} values"
        got = _call(fn, list(values))
        if torch.is_tensor(got) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, numbers.Real):
            raise AssertionError(f"{name} should return a number (float), got {type(got).__name__}{context}")
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        counts = np.unique(np.array([str(v) for v in values]), return_counts=True)[1]
        p = counts / counts.sum()
        known = [(want * math.log(2), "that is the entropy in nats (natural log): use log2 for bits"),
                 (-want, "the sign is wrong: entropy is -sum(p * log2(p)), positive"),
                 (math.log2(len(counts)), "log2(number of distinct values) is the maximum, reached only when every "
                  "value is equally frequent: weight each value by its frequency p"),
                 (float(-(counts * np.log2(counts)).sum()), "use frequencies p = count / total, not counts")]
        hint = next((m for v, m in known if math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-9)),
                    "entropy in bits is -sum(p * log2(p)) over the distinct values, p their frequencies")
        raise AssertionError(f"{name} is wrong{context}: expected {want:.6g} bits, got {got:.6g}\n  {hint}")
    _passed(name, "matches evaluate.variety: 0 bits for one value, log2(V) for V equally frequent values")
