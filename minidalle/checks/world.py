"""Checks for notebook 00 (the shapes world): captions, and counting the prompts of the grammar."""
from __future__ import annotations

from minidalle.checks._common import _call, _integer, _isolated, _name, _passed


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
