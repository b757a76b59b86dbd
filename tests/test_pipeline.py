"""The unCLIP pipeline and the CLI, on tiny untrained models saved to a temporary folder."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from minidalle.__main__ import main
from minidalle.checkpoints import CheckpointError
from minidalle.clip import CLIP, CLIPConfig, save_clip
from minidalle.decoder import Decoder, DecoderConfig, save_decoder
from minidalle.pipeline import UnCLIP, slerp
from minidalle.prior import DiffusionPrior, PriorConfig, save_prior
from minidalle.world import make_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints")
    save_clip(CLIP(CLIPConfig.tiny()), path / "clip")
    save_prior(DiffusionPrior(PriorConfig.tiny()), path / "prior")
    save_decoder(Decoder(DecoderConfig.tiny()), path / "decoder")
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    return UnCLIP.from_pretrained(folder)


def test_generate_shape_range_and_determinism(pipe):
    prompts = ["a large red circle on the left", "a striped square"]
    a = pipe.generate(prompts, seed=0)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, pipe.generate(prompts, seed=0))
    assert not torch.allclose(a, pipe.generate(prompts, seed=1))


def test_generate_is_decode_of_prior_embedding(pipe):
    prompts = ["a small cross"]
    torch.testing.assert_close(pipe.generate(prompts, seed=3), pipe.decode(pipe.prior_embedding(prompts, seed=3), seed=3))


def test_bad_prompt_gets_the_parser_message(pipe):
    with pytest.raises(ValueError, match="unknown word 'pink'"):
        pipe.generate(["a pink circle"])
    with pytest.raises(ValueError, match="no shape"):
        pipe.text_embedding("a red")


def test_variations_interpolate_text_diff_shapes(pipe):
    images = make_dataset(2, seed=0).images
    assert pipe.variations(images, seed=0).shape == (2, 3, 32, 32)
    strip = pipe.interpolate("a red circle", "a blue square", steps=5, seed=0)
    assert strip.shape == (5, 3, 32, 32)
    assert pipe.interpolate(images[0], images[1], steps=3).shape == (3, 3, 32, 32)
    assert pipe.text_diff(images[0], "a red circle", "a blue circle", amount=0.5).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="steps"):
        pipe.interpolate("a red circle", "a blue square", steps=1)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        pipe.variations(torch.rand(2, 3, 16, 16))


def test_invert_variations_and_text_diff_start_from_the_inverted_latent(pipe):
    images = make_dataset(2, seed=1).images
    x_T = pipe.invert(images)
    assert x_T.shape == (2, 3, 32, 32) and torch.isfinite(x_T).all()
    z = pipe.image_embedding(images)
    back = pipe.decode(z, x_T=x_T)  # eta = 0: deterministic, whatever the seed
    torch.testing.assert_close(pipe.variations(images, seed=5, eta=0.0), back)
    torch.testing.assert_close(pipe.variations(images, seed=0, eta=1.0), pipe.decode(z, seed=0, eta=1.0, x_T=x_T))
    assert not torch.allclose(pipe.variations(images, seed=0, eta=1.0), back)
    # a text diff of amount 0 is the image's reconstruction from its inverted latent
    torch.testing.assert_close(pipe.text_diff(images[0], "a red circle", "a blue circle", amount=0.0), back[:1])


def test_slerp_closed_form():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    half = 2**-0.5
    torch.testing.assert_close(slerp(a, b, 0.5), torch.tensor([[half, half]]))
    # unit norm all along, and the angle moves linearly
    path = slerp(a.expand(5, 2), b.expand(5, 2), torch.linspace(0, 1, 5))
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(5))
    angles = torch.atan2(path[:, 1], path[:, 0])
    torch.testing.assert_close(angles, torch.linspace(0, torch.pi / 2, 5))
    x, y = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    mid = slerp(x, y, 0.5)
    torch.testing.assert_close((mid * x).sum(-1), (mid * y).sum(-1))


def test_missing_folder_and_corrupt_checkpoint(tmp_path, folder):
    with pytest.raises(FileNotFoundError):
        UnCLIP.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("clip", "prior", "decoder"):
        for suffix in (".safetensors", ".json"):
            (broken / f"{name}{suffix}").write_bytes((folder / f"{name}{suffix}").read_bytes())
    (broken / "prior.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        UnCLIP.from_pretrained(broken)


def test_cli_writes_png_and_refuses_to_overwrite(tmp_path, folder, capsys):
    out = tmp_path / "out.png"
    args = ["generate", "a small blue striped square", "-o", str(out), "-n", "2", "--steps", "2",
            "--checkpoints", str(folder)]
    assert main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = out.read_bytes()
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(args + ["--force"]) == 0


def test_cli_bad_prompt_is_a_clear_error(tmp_path, folder, capsys):
    code = main(["generate", "a pink circle", "-o", str(tmp_path / "x.png"), "--checkpoints", str(folder)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown word 'pink'" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_cli_help_for_every_command(capsys):
    for command in ([], ["generate"], ["train"], ["evaluate"]):
        with pytest.raises(SystemExit) as info:
            main(command + ["--help"])
        assert info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_cli_train_refuses_to_overwrite(tmp_path, folder, capsys):
    assert main(["train", "clip", "--checkpoints", str(folder)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_train_decoder_with_another_noise_schedule(tmp_path, folder, capsys):
    # issue 17: train decoder --schedule picks the noise schedule; the checkpoint records it, and resuming it
    # with another one is refused (no shape changes, so the weights alone would load without a word)
    shutil.copy(folder / "clip.safetensors", tmp_path)
    shutil.copy(folder / "clip.json", tmp_path)
    tiny = ["--preset", "tiny", "--checkpoints", str(tmp_path)]
    assert main(["train", "decoder", "--steps", "1", "--schedule", "cosine", *tiny]) == 0
    assert json.loads((tmp_path / "decoder.json").read_text())["config"]["schedule"] == "cosine"
    capsys.readouterr()
    assert main(["train", "decoder", "--steps", "2", "--resume", *tiny]) == 2
    err = capsys.readouterr().err
    assert "schedule: saved 'cosine', now 'linear'" in err and "Traceback" not in err
    assert json.loads((tmp_path / "decoder.json").read_text())["step"] == 1  # nothing overwritten
    assert main(["train", "decoder", "--steps", "2", "--resume", "--schedule", "cosine", *tiny]) == 0
    assert json.loads((tmp_path / "decoder.json").read_text())["step"] == 2
    assert main(["train", "prior", "--schedule", "cosine", *tiny]) == 2
    assert "--schedule is the diffusion decoder's" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not one of the schedules
        main(["train", "decoder", "--schedule", "quadratic", *tiny])


def test_cli_unusable_device_is_a_clear_error(tmp_path, folder, capsys):
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as info:
        main(["generate", "a red circle", "-o", str(out), "--checkpoints", str(folder), "--device", "nodevice"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--device nodevice is not usable here" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_explicit_cpu_device_generates(tmp_path, folder):
    out = tmp_path / "x.png"
    assert main(["generate", "a red circle", "-o", str(out), "--steps", "2", "--checkpoints", str(folder),
                 "--device", "cpu"]) == 0
    assert out.exists()
