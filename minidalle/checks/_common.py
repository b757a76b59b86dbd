"""Helpers the checks share: run a check isolated, call the student's function, compare and explain."""
from __future__ import annotations

import functools
import numbers
import textwrap

import numpy as np
import torch


LINE_WIDTH = 80  # nbgrader's validate cuts output lines at 87 characters; keep every line of a message shorter
PREFIX = "AssertionError: "  # what the traceback puts before the message's first line


def wrap_message(message: str, width: int = LINE_WIDTH, prefix: str = PREFIX) -> str:
    """A check's message with every line of `prefix + message` at most `width` characters.

    Continuations are indented by 2; the first line leaves room for the prefix the traceback adds.
    """
    lines = []
    for line in message.split("\n"):
        indent = line[: len(line) - len(line.lstrip())]
        lines += textwrap.wrap(line, width, initial_indent=prefix if not lines else "",
                               subsequent_indent=indent + "  ", break_long_words=False,
                               break_on_hyphens=False) or [prefix if not lines else ""]
    lines[0] = lines[0][len(prefix):]
    return "\n".join(lines)


def _isolated(check):
    """Run a check without touching the caller's random state, so the notebook stays reproducible.

    Its AssertionError is re-raised with lines of at most 80 characters, counting the traceback's
    "AssertionError: " before the first, so that the hint is never cut off (nbgrader's validate
    shows only the first 87 characters of a line); the
    student's own error stays attached as the cause.
    """
    @functools.wraps(check)
    def run(fn) -> None:
        __tracebackhide__ = True
        try:
            with torch.random.fork_rng(devices=[]):
                check(fn)
            return
        except AssertionError as error:
            message, cause = wrap_message(str(error)), error.__cause__
        raise AssertionError(message) from cause  # outside the except: no "during handling" context
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
