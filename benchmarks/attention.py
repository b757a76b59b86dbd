"""Forward + backward time of our MultiHeadAttention vs torch's nn.MultiheadAttention.

Same shapes (B=64 captions, T=16 tokens, M=128 width, 4 heads), same run, interleaved so
that both see the same machine load. Usage: `python benchmarks/attention.py [--quick]`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from minidalle.attention import MultiHeadAttention

B, T, M, HEADS = 64, 16, 128, 4


def _step_ms(module: nn.Module, call, x: torch.Tensor, inner: int) -> float:
    """Mean milliseconds of `inner` forward + backward passes."""
    start = time.perf_counter()
    for _ in range(inner):
        call(module, x).sum().backward()
    return (time.perf_counter() - start) / inner * 1e3


def bench(quick: bool = False) -> dict:
    """Median forward+backward milliseconds of both modules, and ours / torch's."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(M, HEADS)
    theirs = nn.MultiheadAttention(M, HEADS, batch_first=True)
    x = torch.randn(B, T, M, requires_grad=True)
    calls = {
        "ours": (ours, lambda m, x: m(x)),
        "torch": (theirs, lambda m, x: m(x, x, x, need_weights=False)[0]),
    }
    warmup, repeats, inner = (3, 5, 5) if quick else (10, 21, 20)
    for module, call in calls.values():
        _step_ms(module, call, x, warmup)
    times = {name: [] for name in calls}
    for _ in range(repeats):  # interleaved: a load spike hits both, not one
        for name, (module, call) in calls.items():
            times[name].append(_step_ms(module, call, x, inner))
    ours_ms, torch_ms = statistics.median(times["ours"]), statistics.median(times["torch"])
    return {
        "mha_ours_ms": round(ours_ms, 3),
        "mha_torch_ms": round(torch_ms, 3),
        "mha_ratio": round(ours_ms / torch_ms, 3),
        "mha_shape": f"B={B} T={T} M={M} H={HEADS}, forward+backward, {torch.get_num_threads()} threads",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    print(json.dumps(bench(parser.parse_args().quick), indent=2))
