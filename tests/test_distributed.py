"""Several processes (torchrun, DistributedDataParallel): one step on 2 CPU processes equals one
step of a single process on the same global batch; resume on another number of processes;
rank 0 alone writes and shows progress; per-rank data; --device auto."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minidalle import distributed
from minidalle.__main__ import main
from minidalle.checkpoints import paths, read_tensors
from minidalle.clip import CLIP, load_clip
from minidalle.data import export_world, load_folder
from minidalle.sources import training_batch
from minidalle.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--batch-size", "16"]


def state(folder: Path, kind: str = "clip") -> dict[str, torch.Tensor]:
    weights = paths(folder / kind)[0]
    return read_tensors(weights.with_name(weights.name.replace(".safetensors", ".state.safetensors")))


def assert_same_steps(a: Path, b: Path) -> None:
    """Two CLIP runs took the same optimizer steps: equal gradient averages (AdamW's exp_avg) and
    weights. A parameter whose true gradient is zero (a bias before a per-channel GroupNorm, the
    key bias of attention) gets only rounding noise, which Adam's first steps scale up to about
    lr, so weights are compared where the gradient is more than noise."""
    sa, sb = state(a), state(b)
    names = [name for name, _ in CLIP(load_clip(a / "clip").config).named_parameters()]
    compared = total = 0
    for index, name in enumerate(names):
        grad_a, grad_b = sa[f"optimizer.{index}.exp_avg"], sb[f"optimizer.{index}.exp_avg"]
        torch.testing.assert_close(grad_a, grad_b, atol=1e-6, rtol=1e-3, msg=lambda m: f"{name}: {m}")
        real = grad_a.abs() > 1e-6
        torch.testing.assert_close(sa[f"model.{name}"][real], sb[f"model.{name}"][real], atol=1e-6, rtol=1e-5,
                                   msg=lambda m: f"{name}: {m}")
        compared, total = compared + int(real.sum()), total + real.numel()
    assert compared > 0.95 * total  # nearly every weight is compared


def test_torchrun_two_processes_take_the_single_process_step(tmp_path):
    export_world(tmp_path / "data", 64, seed=1)
    ddp, single, straight = tmp_path / "ddp", tmp_path / "single", tmp_path / "straight"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "minidalle", "train", "all", "--data", str(tmp_path / "data"), "--steps", "1", *TINY,
                          "--checkpoints", str(ddp)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote") == 3  # rank 0 only: one line per stage
    assert run.stderr.count("train clip:   0%") == 1  # one progress bar: rank 0's
    assert not list(ddp.glob("*.tmp"))
    assert main(["train", "clip", "--data", str(tmp_path / "data"), "--steps", "1", *TINY,
                 "--checkpoints", str(single)]) == 0
    assert_same_steps(ddp, single)  # 2 processes x 8 pairs = 1 process x 16 pairs
    # Resume the 2-process run in 1 process: the same as 2 steps straight in 1 process.
    for out, resume in ((ddp, ["--resume"]), (straight, [])):
        assert main(["train", "clip", "--data", str(tmp_path / "data"), "--steps", "2", *TINY,
                     "--checkpoints", str(out), *resume]) == 0
    assert_same_steps(ddp, straight)


def test_per_process_data(monkeypatch, tmp_path):
    config = TrainConfig(batch_size=8, seed=2)
    whole, _ = training_batch(None, config, step=3)  # one process: the whole global batch
    assert whole.shape == (8, 3, 32, 32)
    export_world(tmp_path / "data", 40, seed=0)
    folder = load_folder(tmp_path / "data")
    global_batch = folder.batch_indices(step=6, batch_size=8)  # epoch 1 (5 batches of 8 per epoch)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares, indices = [], []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shares.append(training_batch(None, config, step=3)[0])
        indices.append(folder.batch_indices(step=6, batch_size=8))
    assert shares[0].shape == (4, 3, 32, 32) and not torch.equal(shares[0], shares[1])  # per-rank seeds
    assert sorted(torch.cat(indices).tolist()) == sorted(global_batch.tolist())  # the same global batch
    assert distributed.rank_seed(10, 0, 1) == 10 and len({distributed.rank_seed(s, r, 2) for s in (10, 11)
                                                          for r in (0, 1)}) == 4
    with pytest.raises(ValueError, match="batch size 7 does not split evenly over 2 processes"):
        distributed.local_batch_size(7)


def test_only_rank_zero_writes_evaluates_and_shows_progress(monkeypatch, tmp_path):
    model = torch.nn.Linear(2, 1)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    trainer = Trainer(model, lambda m, step: m(torch.ones(1, 2)).sum(), TrainConfig.tiny(), "clip",
                      save=lambda *args: pytest.fail("rank 1 saved"), evaluate=lambda m: pytest.fail("evaluated"),
                      out=tmp_path / "clip")
    assert trainer.progress is False and trainer.evaluate is None
    trainer.run()
    assert not any(tmp_path.iterdir())


def test_device_auto(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert distributed.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert distributed.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun, each process takes its own GPU
    assert distributed.resolve_device("auto") == torch.device("cuda", 1)
    assert distributed.resolve_device("cpu") == torch.device("cpu")


def test_from_pretrained_auto_on_this_machine():
    from minidalle.pipeline import UnCLIP

    expected = distributed.resolve_device("auto")
    pipe = UnCLIP.from_pretrained(device="auto")
    assert pipe.clip.device.type == pipe.prior.device.type == pipe.decoder.device.type == expected.type
    if expected.type == "cpu":  # the same images as an explicit device="cpu"
        cpu = UnCLIP.from_pretrained(device="cpu")
        torch.testing.assert_close(pipe.generate("a red circle", steps=3), cpu.generate("a red circle", steps=3))


def test_cli_device_auto(tmp_path, capsys):
    out = tmp_path / "auto.png"
    assert main(["generate", "a red circle", "-o", str(out), "--steps", "2", "--device", "auto"]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "a red circle", "-o", str(out), "--device", "tpu9"])
    assert "--device tpu9 is not usable here" in capsys.readouterr().err
