"""Reference solutions and plausible wrong answers for notebook 10's exercises (LoRA)."""
import torch
import torch.nn.functional as F


def lora_forward(x, weight, bias, A, B, scale):
    return F.linear(x, weight, bias) + scale * (x @ A.T) @ B.T


def merge_conv_kernel(weight, A, B, scale):
    O, r = B.shape[:2]
    return weight + scale * (B.view(O, r) @ A.view(r, -1)).view_as(weight)


def _merge_in_place(weight, A, B, scale):
    weight += scale * (B.view(B.shape[0], -1) @ A.view(A.shape[0], -1)).view_as(weight)
    return weight


def _merge_scrambled(weight, A, B, scale):
    O, I, k, _ = weight.shape
    update = B.view(O, -1) @ A.permute(0, 2, 3, 1).reshape(A.shape[0], -1)  # flattened (k, k, I)
    return weight + scale * update.view(O, I, k, k)  # viewed back as (I, k, k): scrambled


REFERENCE = {"check_lora_forward": lora_forward, "check_merge_conv": merge_conv_kernel}

WRONG = [  # (check, wrong answer, words the message must contain)
    ("check_lora_forward", lambda x, W, b, A, B, s: F.linear(x, W, b) + (x @ A.T) @ B.T, "multiply the low-rank"),
    ("check_lora_forward", lambda x, W, b, A, B, s: x @ W.T + s * (x @ A.T) @ B.T, "bias"),
    ("check_lora_forward", lambda x, W, b, A, B, s: s * (x @ A.T) @ B.T, "keep that output"),
    ("check_lora_forward", lambda x, W, b, A, B, s: F.linear(x, W, b), "is missing"),
    ("check_lora_forward", lambda x, W, b, A, B, s: F.linear(x, W, b) + (x @ A.T) @ B.T / s, "not divided"),
    ("check_lora_forward", lambda x, W, b, A, B, s: F.linear(x, W, b) + s * (A @ x.transpose(0, 1)).transpose(0, 1) @ B.T,
     "leading dimensions"),
    ("check_merge_conv", lambda W, A, B, s: W + (B.view(B.shape[0], -1) @ A.view(A.shape[0], -1)).view_as(W),
     "by scale"),
    ("check_merge_conv", lambda W, A, B, s: W - s * (B.view(B.shape[0], -1) @ A.view(A.shape[0], -1)).view_as(W),
     "unmerge"),
    ("check_merge_conv", _merge_in_place, "in place"),
    ("check_merge_conv", _merge_scrambled, "scrambled"),
    ("check_merge_conv", lambda W, A, B, s: W + s * (A.view(A.shape[0], -1).T @ B.view(B.shape[0], -1).T).T
     .reshape(W.shape[0], -1).view_as(W).transpose(2, 3), "wrong values"),
]
