"""Issue 16: which stage does the shipped refinement's forgetting come from?

    python benchmarks/exp16/forgetting_by_stage.py

The old prompts of `make bench`'s refinement section (evaluate.evaluation_prompts(256, seed=0): 128
seen, 128 held-out), default generation settings, judge_extended, through the shipped refinement
refine_star_pink with its decoder put back to the unrefined one (so only the text side and the prior
are refined). The bench's section measures the same prompts, seeds and settings before refining and
with the whole refinement; this adds the middle. Writes forgetting_by_stage.json next to this file.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
from minidalle import CHECKPOINT_DIR  # noqa: E402
from minidalle.evaluate import evaluation_prompts, load_judge, score_prompts  # noqa: E402
from minidalle.pipeline import UnCLIP  # noqa: E402
from minidalle.refine import load_refinement  # noqa: E402

torch.set_num_threads(1)
judge = load_judge(extended=True)
prompts, _, _ = evaluation_prompts(256, seed=0)
base = UnCLIP.from_pretrained()
text_prior_only = load_refinement(CHECKPOINT_DIR / "refine_star_pink")
text_prior_only.decoder = base.decoder
name = "refined text + prior, unrefined decoder"
with torch.no_grad():
    scores = score_prompts(judge.predict(text_prior_only.generate(prompts, seed=0)), prompts, intervals=True)
out = {name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in scores.items()
              if k.startswith(("seen_all", "heldout_all"))}}
print(name, out[name], flush=True)
(Path(__file__).with_name("forgetting_by_stage.json")).write_text(json.dumps(out, indent=1) + "\n")
