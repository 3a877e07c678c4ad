"""Pruning: widths follow ratio and round-to, MACs drop, every criterion runs, CAP ranks by attention."""
from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from rtdeploy.attention import capture_attention
from rtdeploy.errors import ConfigError, RegistryError
from rtdeploy.models import attention_blocks, create_model
from rtdeploy.prune import (CRITERIA, PruneConfig, clear_attention_marks, conv_widths, create_criterion,
                            fold_attention, prune_model, rounded_width)


def folded(arch: str = "tiny_se", size: int = 32, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, classes).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)  # no zero-init residual gammas: every ranking is defined
    x = torch.randn(8, 3, size, size)
    fold_attention(model, capture_attention(model, x), x[:2])
    return model


@pytest.fixture(scope="module")
def resnet18():
    return create_model("resnet18", 10).eval()


def test_rounded_width():
    assert rounded_width(19, 64, 8) == 16 and rounded_width(38, 128, 8) == 40
    assert rounded_width(76, 256, 8) == 80 and rounded_width(153, 512, 8) == 152
    assert rounded_width(4, 16, 8) == 8  # never rounds to zero
    assert rounded_width(19, 20, 8) == 16  # never above the layer's own multiple
    assert rounded_width(3, 4, 8) == 3  # narrower than round_to: unrounded
    assert rounded_width(19, 64, 1) == 19


@pytest.mark.parametrize("round_to,kept", [(1, {64: 19, 128: 38, 256: 76, 512: 153}),
                                           (8, {64: 16, 128: 40, 256: 80, 512: 152})])
def test_local_widths_follow_ratio_and_round_to(resnet18, round_to, kept):
    model = copy.deepcopy(resnet18)
    before = conv_widths(model)
    r = prune_model(model, "l1", torch.zeros(1, 3, 64, 64), PruneConfig(ratio=0.7, round_to=round_to))
    assert r.widths_before == before
    assert r.widths_after == {name: kept[c] for name, c in before.items()}  # every conv, same share
    assert all(w % round_to == 0 for w in r.widths_after.values())
    assert (model.fc.in_features, model.fc.out_features) == (kept[512], 10)  # classifier outputs whole
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    if round_to == 1:  # the paper's CAP checkpoint (ResNet18, local 0.7, no round-to): 999,552 params
        assert r.params_after == 999_552


def test_macs_drop_by_about_one_minus_ratio_squared(resnet18):
    model = copy.deepcopy(resnet18)
    r = prune_model(model, "l2", torch.zeros(1, 3, 64, 64), PruneConfig(ratio=0.5, round_to=8))
    assert 0.2 <= r.macs_fraction <= 0.35  # (1 - 0.5)^2 = 0.25; the stem keeps its 3 input channels
    assert r.params_after < 0.3 * r.params_before


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_prunes_a_folded_tiny_model(criterion):
    model = folded()
    x = torch.randn(4, 3, 32, 32)
    calib = [(x, torch.tensor([0, 1, 2, 0]))]
    r = prune_model(model, criterion, x[:1], PruneConfig(ratio=0.5, round_to=1), calib=calib, seed=1)
    assert r.criterion == criterion
    assert r.widths_after == {name: c // 2 for name, c in r.widths_before.items()}
    assert r.macs_after < 0.4 * r.macs_before
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    assert all(p.grad is None for p in model.parameters())  # taylor's gradients are not left behind


def _full_group(model: nn.Module, conv: nn.Conv2d):
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, 32, 32))
    return dg.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))


def _with_attention(model: nn.Module, s: torch.Tensor, gamma: torch.Tensor) -> nn.Module:
    """A folded-looking block: layer2.0.bn1 has gamma' = gamma * s and carries s."""
    bn = model.layer2[0].bn1
    clear_attention_marks(bn)
    bn.weight.data = gamma * s
    bn.register_buffer("rt_attention", s, persistent=False)
    return model


def test_cap_and_bn_rank_differently_when_attention_varies():
    s = torch.linspace(0.1, 0.9, 32)  # attention rises with the channel index
    gamma = torch.linspace(1.0, 0.6, 32)  # gamma falls with it
    model = _with_attention(folded(), s, gamma)
    group = _full_group(model, model.layer2[0].conv1)
    cap = create_criterion("cap", model)(group)
    bn = create_criterion("bn", model)(group)
    assert torch.allclose(cap, gamma * s) and torch.allclose(bn, gamma)
    assert cap.argmax() == 31 and bn.argmax() == 0

    pruned = {}
    for name in ("cap", "bn"):
        m = copy.deepcopy(model)
        prune_model(m, name, torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.5, round_to=1))
        pruned[name] = m.layer2[0].bn1.weight.detach()
    assert torch.allclose(pruned["cap"].sort().values, (gamma * s)[16:].sort().values)  # the high-attention half
    assert torch.allclose(pruned["bn"].sort().values, (gamma * s)[:16].sort().values)  # the high-gamma half


def test_cap_averages_folded_and_downsample_gammas():
    model = folded()
    bn2, ds = model.layer2[0].bn2, model.layer2[0].downsample[1]
    assert hasattr(bn2, "rt_attention") and not hasattr(ds, "rt_attention")  # no SE on downsample
    group = _full_group(model, model.layer2[0].conv2)
    expected = (bn2.weight.abs() + ds.weight.abs()).detach() / 2
    assert torch.allclose(create_criterion("cap", model)(group), expected)
    original = (bn2.weight.abs() / bn2.rt_attention + ds.weight.abs()).detach() / 2
    assert torch.allclose(create_criterion("bn", model)(group), original)


def test_global_scope_gives_uneven_widths_and_keeps_every_layer():
    model = folded()
    r = prune_model(model, "cap", torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.5, scope="global", round_to=1))
    assert min(r.widths_after.values()) >= 1
    assert len({w / r.widths_before[n] for n, w in r.widths_after.items()}) > 1


def test_target_macs_finds_the_ratio():
    model = create_model("tiny", 3)
    r = prune_model(model, "l1", torch.zeros(1, 3, 32, 32), PruneConfig(target_macs=0.5, round_to=1))
    assert r.macs_fraction == pytest.approx(0.5, rel=0.1)
    assert 0.1 < r.ratio < 0.5 and r.search


def test_pruning_through_se_blocks_left_in_place():
    model = create_model("tiny_se", 3).eval()
    r = prune_model(model, "l1", torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.5, round_to=8))
    se = model.layer2[0].se1
    assert (se.fc1.in_features, se.fc1.out_features, se.fc2.out_features) == (16, 2, 16)  # bottleneck kept
    assert r.widths_after["layer2.0.conv1"] == 16 and len(attention_blocks(model)) == 5
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("kwargs,flag", [({"ratio": 1.5}, "--ratio"), ({"ratio": 0.0}, "--ratio"),
                                         ({"round_to": 0}, "--round-to"), ({"scope": "layer"}, "--scope"),
                                         ({"target_macs": 1.2}, "--target-macs")])
def test_bad_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        PruneConfig(**kwargs)


def test_ratio_that_empties_a_layer_is_refused_before_pruning():
    model = create_model("tiny", 3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="every channel of layer 'conv1'") as e:
        prune_model(model, "l1", torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.95, round_to=1))
    assert e.value.exit_code == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_criterion_errors():
    with pytest.raises(ConfigError, match="--criterion bn"):
        create_criterion("cap", create_model("tiny", 3))  # no attention folded into it
    with pytest.raises(RegistryError, match="cap, bn, l1"):
        create_criterion("magic", create_model("tiny", 3))
    with pytest.raises(ConfigError, match="taylor"):
        prune_model(create_model("tiny", 3), "taylor", torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.5))
