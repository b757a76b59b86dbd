"""Checks for notebook 08 (evaluation): the 1-5 rating and the entropy of an attribute."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from minidalle.checks._common import _call, _integer, _isolated, _name, _passed


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
        known = [(want * math.log(2), "that is the entropy in nats (natural log): use log2 for bits"),
                 (-want, "the sign is wrong: entropy is -sum(p * log2(p)), positive"),
                 (math.log2(len(counts)), "log2(number of distinct values) is the maximum, reached only when every "
                  "value is equally frequent: weight each value by its frequency p"),
                 (float(-(counts * np.log2(counts)).sum()), "use frequencies p = count / total, not counts")]
        hint = next((m for v, m in known if math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-9)),
                    "entropy in bits is -sum(p * log2(p)) over the distinct values, p their frequencies")
        raise AssertionError(f"{name} is wrong{context}: expected {want:.6g} bits, got {got:.6g}\n  {hint}")
    _passed(name, "matches evaluate.variety: 0 bits for one value, log2(V) for V equally frequent values")
