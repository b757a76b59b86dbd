"""Reference solutions and wrong answers for notebook 09's checks (collected by tests/test_checks.py)."""
import torch
import torch.nn.functional as F


def hinge_losses(real_scores, fake_scores):
    d_loss = F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return d_loss, -fake_scores.mean()


def projection_logit(features, embeddings, psi, project):
    return psi(features).squeeze(-1) + (project(embeddings) * features).sum(dim=-1)


REFERENCE = {"check_hinge_losses": hinge_losses, "check_projection_logit": projection_logit}

WRONG = [  # (check, wrong answer, words the message must contain)
    ("check_hinge_losses", lambda r, f: (F.relu(1 + r).mean() + F.relu(1 - f).mean(), -f.mean()), "wrong way round"),
    ("check_hinge_losses", lambda r, f: ((1 - r).mean() + (1 + f).mean(), -f.mean()), "clip each term with relu"),
    ("check_hinge_losses", lambda r, f: (F.softplus(-r).mean() + F.softplus(f).mean(), -f.mean()), "logistic"),
    ("check_hinge_losses", lambda r, f: (F.relu(1 - r).sum() + F.relu(1 + f).sum(), -f.mean()), "don't sum"),
    ("check_hinge_losses", lambda r, f: (hinge_losses(r, f)[0], F.relu(1 - f).mean()), "not clipped"),
    ("check_hinge_losses", lambda r, f: (hinge_losses(r, f)[0], f.mean()), "wrong sign"),
    ("check_hinge_losses", lambda r, f: (hinge_losses(r, f)[0], -r.mean()), "its own images"),
    ("check_hinge_losses", lambda r, f: (hinge_losses(r, f)[0], F.softplus(-f).mean()), "non-saturating"),
    ("check_hinge_losses", lambda r, f: hinge_losses(r, f)[0], "two losses"),
    ("check_hinge_losses", lambda r, f: tuple(torch.tensor(x.item()) for x in hinge_losses(r, f)), "no gradient"),
    ("check_hinge_losses", lambda r, f: (torch.stack([F.relu(1 - r).mean() + F.relu(1 + f).mean()]), -f.mean()),
     "0-d tensor"),
    ("check_projection_logit", lambda phi, e, psi, V: psi(phi).squeeze(-1), "condition is missing"),
    ("check_projection_logit", lambda phi, e, psi, V: (V(e) * phi).sum(-1), "unconditional term"),
    ("check_projection_logit", lambda phi, e, psi, V: psi(phi) + (V(e) * phi).sum(-1), "squeeze(-1)"),
    ("check_projection_logit", lambda phi, e, psi, V: psi(phi).squeeze(-1) + V(e) @ phi.T, "not a matrix product"),
    ("check_projection_logit", lambda phi, e, psi, V: psi(phi).squeeze(-1) + F.cosine_similarity(V(e), phi, dim=-1),
     "not a cosine"),
    ("check_projection_logit", lambda phi, e, psi, V: psi(phi).squeeze(-1) + ((e @ V.weight) * phi).sum(-1),
     "embeddings @ V.T"),
]
