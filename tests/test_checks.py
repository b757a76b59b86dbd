"""minidalle.checks: every check passes on a reference solution, reports a stub as "not
implemented yet", and explains at least one plausible wrong answer.

The reference solutions below are what a student would write (the notebooks' solutions for
00-04; for 03 and 05-08, the solutions of the exercises those notebooks will get).
"""
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from minidalle import checks
from minidalle.checks.world import _all_prompts
from minidalle.world import Attributes, parse_prompt


# ----------------------------------------------------------------------------- 00
def caption_of(attrs):
    words = ["a"] + ([attrs.size] if attrs.size else [])
    if attrs.striped:
        words += [attrs.color, "and", attrs.color2] if attrs.color and attrs.color2 else [attrs.color] * bool(attrs.color)
        words.append("striped")
    elif attrs.color:
        words.append(attrs.color)
    words.append(attrs.shape)
    if attrs.position == "center":
        words += ["in", "the", "center"]
    elif attrs.position:
        words += ["on", "the", attrs.position]
    return " ".join(words)


def count_prompts(n_shapes, n_colors, n_sizes, n_positions):
    color_parts = 1 + n_colors + 1 + n_colors + n_colors * (n_colors - 1)
    return n_shapes * color_parts * (n_sizes + 1) * (n_positions + 1)


# ----------------------------------------------------------------------------- 01
def attention_weights(q, k):
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)


def causal_mask(T, S):
    return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)


# ----------------------------------------------------------------------------- 02
def patchify(images, p):
    B, C, S, _ = images.shape
    grid = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, S/p, S/p, p, p)
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(B, (S // p) ** 2, C * p * p)


def text_encoder_parameters(vocab_size, context_length, width, layers, mlp_ratio=4):
    block = (4 * width * width + 4 * width) + (2 * mlp_ratio * width * width + mlp_ratio * width + width) + 4 * width
    return vocab_size * width + context_length * width + layers * block + 2 * width


# ----------------------------------------------------------------------------- 03
def clip_loss(image_features, text_features, logit_scale):
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def clamped_logit_scale(log_scale):
    return log_scale.exp().clamp(max=100.0)


# ----------------------------------------------------------------------------- 04
def q_sample_any(x0, t, noise, alpha_bar):
    a = alpha_bar[t].to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def ddim_step_eta0(x_t, eps, t, t_prev, alpha_bar):
    a = alpha_bar[t].item()
    a_prev = alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps


# ----------------------------------------------------------------------------- 05
def best_of_n(candidates, text):
    scores = torch.einsum("bne,be->bn", candidates, text)
    return candidates[torch.arange(len(candidates)), scores.argmax(dim=1)]


def standardize(embeddings):
    mean = embeddings.mean(dim=0)
    std = (embeddings - mean).std(dim=0).mean()
    return (embeddings - mean) / std, mean, std


# ----------------------------------------------------------------------------- 06
def guidance_mix(cond, uncond, guidance):
    return uncond + guidance * (cond - uncond)


def eps_from_x0(x_t, t, x0, alpha_bar):
    a = alpha_bar[t].to(x_t.dtype).view(-1, *[1] * (x_t.dim() - 1))
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


# ----------------------------------------------------------------------------- 07
def slerp_by_hand(a, b, weight):
    cos = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(cos)
    return (torch.sin((1 - weight) * theta) * a + torch.sin(weight * theta) * b) / torch.sin(theta)


def text_diff_direction(text_from, text_to):
    return F.normalize(text_to - text_from, dim=-1)


# ----------------------------------------------------------------------------- 08
def rate_1_to_5(judged, prompt):
    asked = parse_prompt(prompt)
    said = [n for n in ("shape", "color", "striped", "color2", "size", "position") if getattr(asked, n) is not None]
    wrong = [n for n in said if getattr(judged, n) != getattr(asked, n)]
    if not wrong:
        return 5
    if "shape" not in wrong:
        return 4 if len(wrong) == 1 else 3
    return 2 if len(wrong) < len(said) else 1


def entropy_bits(values):
    counts = torch.tensor(list(Counter(values).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log2()).sum()) + 0.0


REFERENCE = {
    "check_caption_of": caption_of, "check_count_prompts": count_prompts,
    "check_attention_weights": attention_weights, "check_causal_mask": causal_mask,
    "check_patchify": patchify, "check_text_encoder_parameters": text_encoder_parameters,
    "check_clip_loss": clip_loss, "check_logit_scale": clamped_logit_scale,
    "check_q_sample": q_sample_any, "check_ddim_step": ddim_step_eta0,
    "check_best_of_n": best_of_n, "check_standardize": standardize,
    "check_guidance": guidance_mix, "check_eps_from_x0": eps_from_x0,
    "check_slerp": slerp_by_hand, "check_text_diff_direction": text_diff_direction,
    "check_rating": rate_1_to_5, "check_entropy": entropy_bits,
}
ALL_CHECKS = [name for names in checks.EXERCISES.values() for name in names]


def _more_references():
    """References and wrong answers of newer exercises live in tests/check_refs_*.py, one file per
    notebook group (each defines REFERENCE = {check: solution} and WRONG = [(check, answer, words)])."""
    import importlib.util
    from pathlib import Path

    reference, wrong = {}, []
    for path in sorted(Path(__file__).parent.glob("check_refs_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        overlap = set(reference) & set(module.REFERENCE)
        assert not overlap, f"{path.name} redefines {overlap}"
        reference.update(module.REFERENCE)
        wrong += list(module.WRONG)
    return reference, wrong


# ----------------------------------------------------------------------------- wrong answers
def _caption_without_the(attrs):
    return caption_of(attrs).replace(" the ", " ")


def _caption_colors_swapped(attrs):
    if attrs.color and attrs.color2:
        attrs = Attributes(attrs.shape, attrs.color2, True, attrs.color, attrs.size, attrs.position)
    return caption_of(attrs)


def _caption_full_only(attrs):
    colors = f"{attrs.color} and {attrs.color2} striped" if attrs.striped else attrs.color
    where = "in the center" if attrs.position == "center" else f"on the {attrs.position}"
    return f"a {attrs.size} {colors} {attrs.shape} {where}"


def _ddim_wraps_around(x_t, eps, t, t_prev, alpha_bar):
    a, a_prev = alpha_bar[t].item(), alpha_bar[t_prev].item()  # t_prev = -1 picks the last value
    x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps


def _rate_judging_everything(judged, prompt):
    asked = parse_prompt(prompt)
    fields = ("shape", "color", "striped", "color2", "size", "position")
    wrong = [n for n in fields if getattr(judged, n) != getattr(asked, n)]  # None counts as wrong
    if not wrong:
        return 5
    if "shape" not in wrong:
        return 4 if len(wrong) == 1 else 3
    return 2 if len(wrong) < len(fields) else 1


WRONG = [  # (check, wrong answer, words the message must contain)
    ("check_caption_of", _caption_without_the, "left out 'the'"),
    ("check_caption_of", _caption_colors_swapped, "main colour comes first"),
    ("check_caption_of", _caption_full_only, "is simply not said"),
    ("check_count_prompts", lambda S, C, Z, P: S * (2 + 2 * C + C * (C - 1) // 2) * (Z + 1) * (P + 1), "ordered"),
    ("check_count_prompts", lambda S, C, Z, P: S * C * C * Z * P, "full scenes"),
    ("check_count_prompts", lambda S, C, Z, P: S * (2 + 2 * C + C * (C - 1)) * Z * P, "left unsaid"),
    ("check_attention_weights", lambda q, k: (q @ k.transpose(-2, -1)).softmax(-1), "not scaled"),
    ("check_attention_weights", lambda q, k: (q @ k.transpose(-2, -1) / q.shape[-1]).softmax(-1), "not by d"),
    ("check_attention_weights", lambda q, k: (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-2),
     "wrong dimension"),
    ("check_attention_weights", lambda q, k: (k @ q.transpose(-2, -1)).softmax(-1), "rows are queries"),
    ("check_causal_mask", lambda T, S: torch.ones(T, S, dtype=torch.bool).triu(S - T), "wrong way round"),
    ("check_causal_mask", lambda T, S: ~causal_mask(T, S), "swapped"),
    ("check_causal_mask", lambda T, S: torch.ones(T, S, dtype=torch.bool).tril(), "aligned at the end"),
    ("check_causal_mask", lambda T, S: torch.ones(T, S).tril(S - T), "boolean"),
    ("check_causal_mask", lambda T, S: torch.ones(T, S, dtype=torch.bool).tril(S - T - 1), "see itself"),
    ("check_patchify", lambda x, p: patchify(x.transpose(2, 3), p), "rows and columns are swapped"),
    ("check_patchify", lambda x, p: x.unfold(2, p, p).unfold(3, p, p).permute(0, 3, 2, 1, 4, 5).reshape(
        len(x), -1, 3 * p * p), "wrong order"),
    ("check_patchify", lambda x, p: x.reshape(len(x), -1, 3 * p * p), "plain reshape"),
    ("check_patchify", lambda x, p: x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(
        len(x), -1, 3 * p * p), "channel first"),
    ("check_patchify", lambda x, p: patchify(x, p).view(len(x), -1, 3, p, p), "3*"),
    ("check_text_encoder_parameters", lambda V, L, M, n, r: text_encoder_parameters(V, L, M, n, r) - 2 * M,
     "final LayerNorm"),
    ("check_text_encoder_parameters", lambda V, L, M, n, r: text_encoder_parameters(V, L, M, n, r) - L * M,
     "position embedding"),
    ("check_clip_loss", lambda i, t, s: F.cross_entropy(s * i @ t.T, torch.arange(len(i))), "only image -> text"),
    ("check_clip_loss", lambda i, t, s: clip_loss(i, t, s.exp()), "don't exp it again"),
    ("check_clip_loss", lambda i, t, s: clip_loss(i, t, 1.0), "multiply the cosine similarities by logit_scale"),
    ("check_clip_loss", lambda i, t, s: 2 * clip_loss(i, t, s), "factor 2"),
    ("check_clip_loss", lambda i, t, s: F.cross_entropy(s * i @ t.T, torch.arange(len(i)), reduction="none"),
     "one number"),
    ("check_logit_scale", lambda x: x.clamp(max=100.0), "exponentiate"),
    ("check_logit_scale", lambda x: x.clamp(max=100.0).exp(), "not the log at 100"),
    ("check_logit_scale", lambda x: torch.tensor(math.exp(x.item())).clamp(max=100.0), "no gradient"),
    ("check_q_sample", lambda x0, t, n, ab: ab[t].view(-1, *[1] * (x0.dim() - 1)) * x0
     + (1 - ab[t].view(-1, *[1] * (x0.dim() - 1))) * n, "square roots"),
    ("check_q_sample", lambda x0, t, n, ab: q_sample_any(n, t, x0, ab), "swapped"),
    ("check_q_sample", lambda x0, t, n, ab: ab[t].float()[:, None].sqrt() * x0 + (1 - ab[t].float()[:, None]).sqrt() * n,
     "(B, 1, ..., 1)"),
    ("check_ddim_step", _ddim_wraps_around, "alpha_bar[-1]"),
    ("check_ddim_step", lambda x, e, t, tp, ab: (x - math.sqrt(1 - ab[t].item()) * e) / math.sqrt(ab[t].item()),
     "predicted x0"),
    ("check_best_of_n", lambda c, t: c[torch.arange(len(c)), torch.einsum("bne,be->bn", c, t).argmin(1)], "least"),
    ("check_best_of_n", lambda c, t: torch.einsum("bne,be->bn", c, t).argmax(1), "not their indices"),
    ("check_best_of_n", lambda c, t: c[:, torch.einsum("bne,be->bn", c, t).argmax(1)], "one row per prompt"),
    ("check_standardize", lambda x: ((x - x.mean(0)) / x.std(0), x.mean(0), x.std(0)), "one std for all"),
    ("check_standardize", lambda x: ((x - x.mean(0)) / (x - x.mean(0)).std(), x.mean(0), (x - x.mean(0)).std()),
     "per-dimension stds"),
    ("check_standardize", lambda x: (x / standardize(x)[2], *standardize(x)[1:]), "subtract the mean"),
    ("check_standardize", lambda x: (x, x.mean(), x.std()), "one value per dimension"),
    ("check_guidance", lambda c, u, g: c + g * (c - u), "(1 + w) convention"),
    ("check_guidance", lambda c, u, g: u + g * (u - c), "wrong way"),
    ("check_guidance", lambda c, u, g: g * c, "guidance 0"),
    ("check_eps_from_x0", lambda x, t, x0, ab: (x - ab[t].view(-1, *[1] * (x.dim() - 1)).sqrt() * x0)
     / ab[t].view(-1, *[1] * (x.dim() - 1)).sqrt(), "divide by sqrt(1 - alpha_bar)"),
    ("check_eps_from_x0", lambda x, t, x0, ab: -eps_from_x0(x, t, x0, ab), "wrong sign"),
    ("check_slerp", lambda a, b, w: (1 - w) * a + w * b, "linear interpolation"),
    ("check_slerp", lambda a, b, w: F.normalize((1 - w) * a + w * b, dim=-1), "uneven speed"),
    ("check_slerp", lambda a, b, w: slerp_by_hand(b, a, w), "swapped"),
    ("check_slerp", lambda a, b, w: (torch.sin((1 - w) * torch.acos((a * b).sum(-1, keepdim=True))) * a
                                     + torch.sin(w * torch.acos((a * b).sum(-1, keepdim=True))) * b)
     / torch.sin(torch.acos((a * b).sum(-1, keepdim=True))), "NaN when a == b"),
    ("check_text_diff_direction", lambda a, b: F.normalize(a - b, dim=-1), "wrong way round"),
    ("check_text_diff_direction", lambda a, b: b - a, "unit length"),
    ("check_rating", _rate_judging_everything, "leaves open is not judged"),
    ("check_rating", lambda judged, prompt: str(rate_1_to_5(judged, prompt)), "integer"),
    ("check_entropy", lambda v: entropy_bits(v) * math.log(2), "natural log"),
    ("check_entropy", lambda v: math.log2(len(set(v))), "equally frequent"),
    ("check_entropy", lambda v: -entropy_bits(v), "sign"),
]


_extra_reference, _extra_wrong = _more_references()
assert not set(_extra_reference) & set(REFERENCE), "a check has two references"
REFERENCE.update(_extra_reference)
WRONG += _extra_wrong


def _flat(message: str) -> str:
    """A message with its line wrapping undone, to look for words that may span two lines."""
    return " ".join(message.split())


# ----------------------------------------------------------------------------- tests
def test_every_check_is_listed_and_has_a_reference():
    defined = sorted(name for name in dir(checks) if name.startswith("check_"))
    assert sorted(ALL_CHECKS) == defined == sorted(REFERENCE)
    assert {name for name, _, _ in WRONG} == set(ALL_CHECKS)  # every check meets a wrong answer


@pytest.mark.parametrize("check", ALL_CHECKS)
def test_check_passes_on_the_reference(check, capsys):
    getattr(checks, check)(REFERENCE[check])
    out = capsys.readouterr().out
    assert out.startswith(f"✓ {REFERENCE[check].__name__}: ") and out.count("\n") == 1


@pytest.mark.parametrize("check", ALL_CHECKS)
def test_check_reports_a_stub_as_not_implemented(check, capsys):
    def stub(*args):
        # YOUR CODE HERE
        raise NotImplementedError()

    with pytest.raises(AssertionError, match="stub is not implemented yet") as info:
        getattr(checks, check)(stub)
    assert info.value.__context__ is None and info.value.__cause__ is None  # no traceback of the stub
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("check, wrong, words", WRONG, ids=[f"{c}-{w}" for c, _, w in WRONG])
def test_check_explains_a_wrong_answer(check, wrong, words, capsys):
    with pytest.raises(AssertionError) as info:
        getattr(checks, check)(wrong)
    assert words in _flat(str(info.value))
    assert capsys.readouterr().out == ""
    # nbgrader's validate shows the first 87 characters of each line of the traceback, whose last
    # lines read "AssertionError: <message>": every line must fit
    shown = f"AssertionError: {info.value}"
    assert max(len(line) for line in shown.split("\n")) <= 80, shown


def test_an_error_in_the_students_code_keeps_its_traceback():
    def broken(q, k):
        return q @ k  # (T, d) @ (S, d): shapes do not match

    with pytest.raises(AssertionError, match="broken raised RuntimeError") as info:
        checks.check_attention_weights(broken)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_prompt_count_matches_the_grammar():
    assert count_prompts(4, 7, 2, 5) == len(_all_prompts()) == 4176
    assert len({caption_of(p) for p in _all_prompts()}) == 4176  # distinct prompts


def test_references_agree_with_the_package():
    """The 03/05-08 exercises' solutions, checked against what the package actually runs."""
    from minidalle.prior import DiffusionPrior, PriorConfig

    torch.manual_seed(0)
    prior = DiffusionPrior(PriorConfig.tiny()).eval()
    text = F.normalize(torch.randn(3, 16), dim=-1)
    chosen = prior.sample(text, seed=0, best_of=4, steps=2)
    candidates = prior.sample(text.repeat_interleave(4, 0), seed=0, best_of=1, steps=2).view(3, 4, 16)
    # same generator draws: best_of=4 on 3 texts samples the 12 candidates best_of=1 samples on 12 texts
    torch.testing.assert_close(chosen, best_of_n(candidates, text))


@pytest.mark.parametrize("check", ["check_patchify", "check_text_encoder_parameters", "check_standardize",
                                   "check_guidance"])
def test_a_check_leaves_the_random_state_alone(check, capsys):
    """Checks build modules (random init) but must not change what the notebook draws next."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    getattr(checks, check)(REFERENCE[check])
    assert torch.equal(torch.rand(3), expected)
