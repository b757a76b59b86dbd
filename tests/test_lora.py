"""minidalle.lora against the dense equivalent: F.linear / F.conv2d with the weight W + (alpha / r) B A."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minidalle import lora
from minidalle.checkpoints import CheckpointError
from minidalle.lora import LoRAConv2d, LoRALinear, add_lora, lora_state_dict, merge_lora, unmerge_lora


def _randomize_b(module: nn.Module, seed: int = 0) -> None:
    """B starts at zero; give it values so that the update is not trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g))


def test_linear_starts_as_the_unchanged_layer_and_matches_the_dense_update():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    x = torch.randn(5, 3, 12)
    before = base(x)
    layer = LoRALinear(copy.deepcopy(base), rank=3, alpha=6.0)
    assert torch.equal(layer(x), before)  # B = 0: exactly the old layer (Hu et al. 2021, section 4.1)
    _randomize_b(layer)
    dense = base.weight + (6.0 / 3) * layer.lora_B @ layer.lora_A  # W + (alpha / r) B A, (7, 12)
    torch.testing.assert_close(layer(x), F.linear(x, dense, base.bias))
    torch.testing.assert_close(layer.weight, dense)  # what F.linear(x, layer.weight) users see
    assert layer.lora_A.shape == (3, 12) and layer.lora_B.shape == (7, 3)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (1, 1, 0)])
def test_conv_matches_the_dense_update(kernel, stride, padding):
    torch.manual_seed(1)
    base = nn.Conv2d(6, 10, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 6, 9, 9)
    layer = LoRAConv2d(copy.deepcopy(base), rank=2, alpha=4.0)
    assert torch.equal(layer(x), base(x))
    _randomize_b(layer)
    update = (layer.lora_B.view(10, 2) @ layer.lora_A.view(2, -1)).view_as(base.weight)  # (O, I, k, k)
    dense = F.conv2d(x, base.weight + 2.0 * update, base.bias, stride, padding)
    torch.testing.assert_close(layer(x), dense)


@pytest.mark.parametrize("make", [lambda: LoRALinear(nn.Linear(8, 8), 4), lambda: LoRAConv2d(nn.Conv2d(4, 8, 3, padding=1), 2)])
def test_merge_gives_the_same_output_and_unmerge_restores_the_weight(make):
    torch.manual_seed(2)
    layer = make()
    _randomize_b(layer)
    x = torch.randn(3, 8) if isinstance(layer, LoRALinear) else torch.randn(3, 4, 5, 5)
    original, unmerged_out = layer.base.weight.detach().clone(), layer(x)
    layer.merge()
    layer.merge()  # twice is once
    assert layer.merged
    torch.testing.assert_close(layer(x), unmerged_out)
    torch.testing.assert_close(layer.base.weight, original + layer.delta())
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged_out)


def test_only_the_adapters_train_and_b_gets_the_first_gradient():
    torch.manual_seed(3)
    layer = LoRALinear(nn.Linear(5, 4), rank=2)
    layer(torch.randn(6, 5)).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None  # frozen
    assert layer.lora_B.grad.abs().sum() > 0  # B = 0 but A x is not: B moves first
    assert torch.equal(layer.lora_A.grad, torch.zeros_like(layer.lora_A))  # dL/dA = B^T (...) = 0 at B = 0
    assert lora.count_parameters(layer) == 2 * (5 + 4)  # r (in + out) instead of in * out + out


def test_bad_rank_and_grouped_convolutions_fail_clearly():
    with pytest.raises(ValueError, match="rank must be an integer from 1 to 3"):
        LoRALinear(nn.Linear(3, 8), rank=4)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(3, 8), rank=0)
    with pytest.raises(ValueError, match="groups=1"):
        LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError, match="inside a module"):
        add_lora(nn.Linear(3, 3))


def _tiny_unet():
    from minidalle.unet import UNet, UNetConfig
    torch.manual_seed(4)
    return UNet(UNetConfig.tiny()).eval()


def test_add_lora_on_the_unet_wraps_every_layer_and_keeps_the_output():
    unet = _tiny_unet()
    x, t, e = torch.randn(2, 3, 32, 32), torch.tensor([3, 50]), F.normalize(torch.randn(2, 16), dim=-1)
    with torch.no_grad():
        before = unet(x, t, e)
    n_layers = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in unet.modules())
    wrapped = add_lora(unet, rank=2)
    assert len(wrapped) == n_layers and add_lora(unet, rank=2) == []  # no double wrapping
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) and not n.endswith(".base")
                   for n, m in unet.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, e), before, rtol=0, atol=0)
        _randomize_b(unet)
        changed = unet(x, t, e)
        merge_lora(unet)  # merged weights: the plain layers run, the cross-attention reads .weight
        torch.testing.assert_close(unet(x, t, e), changed, rtol=1e-4, atol=1e-4)
        unmerge_lora(unet)
        torch.testing.assert_close(unet(x, t, e), changed, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(changed, before)
    assert set(lora_state_dict(unet)) == {f"{n}.{p}" for n in wrapped for p in ("lora_A", "lora_B")}
    assert all(p.requires_grad == n.endswith(("lora_A", "lora_B")) for n, p in unet.named_parameters())


def test_adapters_save_alone_and_load_into_a_fresh_model(tmp_path):
    unet = _tiny_unet()
    fresh = copy.deepcopy(unet)
    add_lora(unet, rank=2, alpha=2.0, where=lambda name: name.startswith("mid."))
    _randomize_b(unet)
    weights = lora.save_lora(unet, tmp_path / "adapter")
    from safetensors.torch import load_file
    assert set(load_file(str(weights))) == set(lora_state_dict(unet))  # nothing but A and B
    with pytest.raises(FileExistsError):
        lora.save_lora(unet, tmp_path / "adapter")
    lora.load_lora(fresh, tmp_path / "adapter")
    x, t, e = torch.randn(1, 3, 32, 32), torch.tensor([7]), F.normalize(torch.randn(1, 16), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, e), unet(x, t, e))
    other = _tiny_unet()
    add_lora(other, rank=3, where=lambda name: name.startswith("mid."))  # another rank: shapes differ
    with pytest.raises(CheckpointError, match="shape"):
        lora.load_lora(other, tmp_path / "adapter")


def test_a_trained_adapter_fits_a_low_rank_change():
    """Tiny overfit: a rank-2 adapter learns a rank-2 change of a frozen layer."""
    torch.manual_seed(5)
    base = nn.Linear(10, 10)
    target = copy.deepcopy(base)
    with torch.no_grad():
        target.weight += torch.randn(10, 2) @ torch.randn(2, 10) * 0.3
    layer = LoRALinear(copy.deepcopy(base), rank=2, alpha=2.0)
    optimizer = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=0.03)
    x = torch.randn(256, 10)
    for _ in range(150):
        loss = F.mse_loss(layer(x), target(x).detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3
    torch.testing.assert_close(layer.weight, target.weight, rtol=0, atol=0.02)


def test_add_lora_draws_A_from_the_generator_it_is_given():
    def wrapped(seed):
        torch.manual_seed(seed)  # the global generator: not used when one is given
        module = nn.Sequential(nn.Linear(6, 5), nn.Conv2d(3, 4, 3))
        add_lora(module, rank=2, generator=torch.Generator().manual_seed(7))
        return module[0].lora_A.detach(), module[1].lora_A.detach()

    for a, b in zip(wrapped(0), wrapped(1)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
