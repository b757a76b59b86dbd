"""Reference solutions and wrong answers of notebook 11's exercises (flow matching), for tests/test_checks.py."""
import torch


def flow_pair(x0, noise, t):
    t = t.view(-1, *[1] * (x0.dim() - 1))  # (B, 1, ..., 1)
    return (1 - t) * x0 + t * noise, noise - x0


def heun_step_by_hand(velocity, x, t, t_next):
    v = velocity(x, t)
    guess = x + (t_next - t) * v
    return x + (t_next - t) * (v + velocity(guess, t_next)) / 2


def _column(t, x):
    return t.view(-1, *[1] * (x.dim() - 1))


REFERENCE = {"check_flow_pair": flow_pair, "check_heun_step": heun_step_by_hand}

WRONG = [  # (check, wrong answer, words the message must contain)
    ("check_flow_pair", lambda x0, n, t: (_column(t, x0) * x0 + (1 - _column(t, x0)) * n, n - x0),
     "path runs the other way"),
    ("check_flow_pair", lambda x0, n, t: ((1 - _column(t, x0)).sqrt() * x0 + _column(t, x0).sqrt() * n, n - x0),
     "no square roots"),
    ("check_flow_pair", lambda x0, n, t: ((1 - t[0]) * x0 + t[0] * n, n - x0), "its own time"),
    ("check_flow_pair", lambda x0, n, t: ((1 - t[:, None]) * x0 + t[:, None] * n, n - x0), "broadcasts"),
    ("check_flow_pair", lambda x0, n, t: (flow_pair(x0, n, t)[0], x0 - n), "noise - x0"),
    ("check_flow_pair", lambda x0, n, t: (flow_pair(x0, n, t)[0], n), "eps target"),
    ("check_flow_pair", lambda x0, n, t: (flow_pair(x0, n, t)[0], flow_pair(x0, n, t)[0] - x0), "same at every t"),
    ("check_flow_pair", lambda x0, n, t: flow_pair(x0, n, t)[0], "two tensors"),
    ("check_heun_step", lambda v, x, t, s: x + (s - t) * v(x, t), "Euler's step only"),
    ("check_heun_step", lambda v, x, t, s: x + (s - t) * v(x + (s - t) * v(x, t), s), "alone"),
    ("check_heun_step", lambda v, x, t, s: x + (s - t) * (v(x, t) + v(x + (s - t) * v(x, t), s)), "average"),
    ("check_heun_step", lambda v, x, t, s: x + (s - t) * (v(x, t) + v(x + (s - t) * v(x, t), t)) / 2,
     "at time t_next"),
    ("check_heun_step", lambda v, x, t, s: x + (t - s) * (v(x, t) + v(x + (s - t) * v(x, t), s)) / 2,
     "negative"),
    ("check_heun_step", lambda v, x, t, s: torch.zeros(3), "wrong shape"),
]
