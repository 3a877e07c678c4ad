"""Mean SE attention capture and its folding into BatchNorm (CAP's exactness claim)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtdeploy.attention import capture_attention
from rtdeploy.errors import PipelineError
from rtdeploy.models import SEBlock, attention_blocks, create_model
from rtdeploy.models.structure import set_module
from rtdeploy.prune import FoldError, fold_attention, fold_plan
from rtdeploy.prune.fold import ATTENTION_ATTR


def perturbed(arch: str, classes: int = 5, seed: int = 0) -> nn.Module:
    """A random-init model with non-trivial BN statistics and SE biases (eval mode)."""
    torch.manual_seed(seed)
    model = create_model(arch, classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, SEBlock):  # input-dependent attention, s_bar spread well away from 0.5
            m.fc1.weight.data.normal_(0, 2.0)
            m.fc2.weight.data.normal_(0, 2.0)
            m.fc2.bias.data.normal_(0, 1.0)
    return model.eval()


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class ConstantScale(nn.Module):
    def __init__(self, s: torch.Tensor):
        super().__init__()
        self.register_buffer("s", s.view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.s


def test_capture_is_the_mean_sigmoid_output():
    model, x = perturbed("tiny_se"), images(6, 32)
    means = capture_attention(model, x)
    assert set(means) == set(attention_blocks(model)) and len(means) == 5
    seen = {}
    handle = model.layer2[0].se1.register_forward_hook(lambda m, i, o: seen.update(s=m.scale(i[0])))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert torch.allclose(means["layer2.0.se1"], seen["s"].mean(0), atol=1e-6)
    assert not model.training  # mode restored (it was eval)


def test_capture_respects_max_images_and_loaders():
    model, x = perturbed("tiny_se"), images(10, 32)
    capped = capture_attention(model, x, max_images=3)
    first3 = capture_attention(model, x[:3])
    from_loader = capture_attention(model, [(x[:2], None), (x[2:5], None)], max_images=3)
    done = []
    capture_attention(model, x, max_images=4, on_progress=lambda d, t: done.append((d, t)))
    for name in capped:
        assert torch.allclose(capped[name], first3[name], atol=1e-6)
        assert torch.allclose(from_loader[name], first3[name], atol=1e-6)
    assert done[-1] == (4, 4)


@pytest.mark.parametrize("arch,size", [("tiny_se", 64), ("resnet18_se", 64)])
def test_folded_model_equals_constant_mean_se_model(arch, size):
    model, x = perturbed(arch), images(4, size)
    means = capture_attention(model, images(8, size, seed=2))
    reference = copy.deepcopy(model)
    for name, s in means.items():
        set_module(reference, name, ConstantScale(s))
    stripped = copy.deepcopy(model)  # what a fold that forgot s_bar would compute
    for name in means:
        set_module(stripped, name, nn.Identity())
    with torch.no_grad():
        original_out, stripped_out = model(x), stripped(x)
    gammas = {l.bn: model.get_submodule(l.bn).weight.detach().clone() for l in fold_plan(model)}

    report = fold_attention(model, means, x)

    assert not attention_blocks(model)
    with torch.no_grad():
        folded, expected = model(x), reference(x)
    scale = expected.abs().max().item()
    assert (folded - expected).abs().max().item() <= 1e-5 * max(1.0, scale)
    assert (folded - original_out).abs().max().item() > 1e-3  # non-trivial: SE was input-dependent
    assert (folded - stripped_out).abs().max().item() > 1e-2  # ... and s_bar matters
    assert report.ok and report.max_abs_diff <= report.tolerance
    assert len(report.blocks) == len(means) == (17 if arch == "resnet18_se" else 5)
    for block in report.blocks:  # gamma' = gamma * s_bar, and s_bar is kept for the criteria
        bn, s = model.get_submodule(block["bn"]), means[block["se"]]
        assert torch.allclose(bn.weight, gammas[block["bn"]] * s)
        assert torch.equal(getattr(bn, ATTENTION_ATTR), s)
        assert ATTENTION_ATTR not in bn.state_dict()  # never saved into checkpoints


def test_fold_plan_finds_bn_through_relu_and_without():
    plan = {l.se: l for l in fold_plan(create_model("tiny_se", 3))}
    assert (plan["layer1.0.se1"].bn, plan["layer1.0.se1"].relu) == ("layer1.0.bn1", True)
    assert (plan["layer1.0.se2"].bn, plan["layer1.0.se2"].relu) == ("layer1.0.bn2", False)
    assert plan["se"].bn == "bn1"


class NoBN(nn.Module):
    """conv -> ReLU -> SE: there is no BatchNorm to fold into."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.attn = SEBlock(16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        x = self.attn(self.block(F.relu(self.bn(self.conv(x)))))
        return self.fc(x.mean((2, 3)))


class SharedBN(nn.Module):
    """conv -> BN -> ReLU -> SE, but the BN output also feeds a residual: folding would change it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.se = SEBlock(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.fc((self.se(torch.relu(y)) + y).mean((2, 3)))


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.se = SEBlock(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.se(F.relu(self.bn(self.conv(x)), inplace=True)).mean((2, 3)))


@pytest.mark.parametrize("model,block,why", [(NoBN(), "attn", "ReLU"), (SharedBN(), "se", "other op")])
def test_fold_error_names_the_block(model, block, why):
    with pytest.raises(FoldError, match=f"SE block '{block}'") as e:
        fold_plan(model)
    assert why in str(e.value) and "--criterion bn" in str(e.value)
    assert e.value.exit_code == 2
    assert attention_blocks(model)  # nothing was changed


def test_fold_through_functional_relu_is_exact():
    torch.manual_seed(0)
    model = FunctionalRelu().eval()
    model.bn.weight.data.uniform_(0.5, 1.5)
    model.bn.bias.data.uniform_(-0.5, 0.5)
    x = images(4, 16)
    means = {"se": torch.linspace(0.1, 0.9, 8)}
    reference = copy.deepcopy(model)
    reference.se = ConstantScale(means["se"])
    report = fold_attention(model, means, x)
    assert report.blocks[0]["relu"] and isinstance(model.se, nn.Identity)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_fold_rejects_attention_of_the_wrong_shape():
    model = perturbed("tiny_se")
    means = capture_attention(model, images(2, 32))
    means["layer2.0.se1"] = means["layer2.0.se1"][:5]
    with pytest.raises(PipelineError, match="layer2.0.se1"):
        fold_attention(model, means, images(2, 32))


def test_fold_on_model_without_se_is_a_no_op():
    model = create_model("tiny", 3)
    before = copy.deepcopy(model.state_dict())
    report = fold_attention(model, {})
    assert report.blocks == [] and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# --------------------------------------------------------------------------- SE of every origin (issue 12)


def _perturb_bns(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics so that activations (and attention) differ per channel."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _constant_reference(model: nn.Module, means: dict) -> nn.Module:
    """A copy where every SE block is replaced by multiplication with its mean attention."""
    reference = copy.deepcopy(model)
    for name, s in means.items():
        set_module(reference, name, ConstantScale(s))
    return reference


@pytest.mark.parametrize("arch,modes", [("tv/mobilenet_v3_small", {"bn", "consumer"}),
                                        ("tv/efficientnet_b0", {"consumer"}),
                                        ("tv/regnet_y_400mf", {"bn"})])
def test_fold_is_exact_on_torchvision_se_models(arch, modes):
    """MobileNetV3 (SE after ReLU or hardswish), EfficientNet (after SiLU), RegNetY (after ReLU):
    every SqueezeExcitation is found, folded and removed, and the folded model computes what the
    model with each SE fixed to its mean attention computes."""
    from torchvision.ops.misc import SqueezeExcitation

    torch.manual_seed(0)
    model = _perturb_bns(create_model(arch, 4))
    n_se = sum(isinstance(m, SqueezeExcitation) for m in model.modules())
    x = images(4, 32)
    means = capture_attention(model, x)
    assert len(means) == n_se > 0
    reference = _constant_reference(model, means)
    report = fold_attention(model, means, x)
    assert {b["mode"] for b in report.blocks} == modes
    assert report.ok and report.verdict.startswith("exact") and len(report.removed) == n_se
    assert not any(isinstance(m, SqueezeExcitation) for m in model.modules())
    with torch.no_grad():
        ref, out = reference(x), model(x)
    assert (out - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max())


def test_timm_se_models_fold_exactly():
    pytest.importorskip("timm")
    for arch in ("timm/efficientnet_b0", "timm/seresnet18"):
        torch.manual_seed(0)
        model = _perturb_bns(create_model(arch, 3))
        x = images(2, 32)
        means = capture_attention(model, x)
        assert means, arch
        reference = _constant_reference(model, means)
        report = fold_attention(model, means, x)
        assert report.ok and not attention_blocks(model), arch
        with torch.no_grad():
            assert torch.allclose(model(x), reference(x), atol=1e-4 * max(1.0, float(reference(x).abs().max())))


class GroupedConsumer(nn.Module):
    """conv -> BN -> SiLU -> SE -> a depthwise conv and a 2-group conv: the SE scale can only go
    into the consumers' input channels, per group."""

    def __init__(self, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.se = SEBlock(8, reduction=2)
        self.next = nn.Conv2d(8, 8 if groups == 8 else 6, 3, padding=1, groups=groups)
        self.fc = nn.Linear(self.next.out_channels, 2)

    def forward(self, x):
        return self.fc(self.next(self.se(self.act(self.bn(self.conv(x))))).mean((2, 3)))


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_consumer_fold_is_exact_for_grouped_convs(groups):
    torch.manual_seed(0)
    model = _perturb_bns(GroupedConsumer(groups))
    means = {"se": torch.linspace(0.05, 0.95, 8)}
    x = images(3, 12)
    reference = _constant_reference(model, means)
    gamma = model.bn.weight.detach().clone()
    report = fold_attention(model, means, x)
    assert report.blocks[0]["mode"] == "consumer" and report.blocks[0]["consumers"] == ["next"]
    assert torch.equal(model.bn.weight, gamma)  # the BN is not scaled: SiLU is not homogeneous
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_cap_ranks_consumer_folded_channels_by_gamma_times_attention():
    """After a consumer fold, cap scores |gamma| x s_bar and bn scores |gamma|, on the same model."""
    from rtdeploy.prune.criteria import BNScale

    model = _perturb_bns(GroupedConsumer(1))
    means = {"se": torch.linspace(0.05, 0.95, 8)}
    fold_attention(model, means, images(2, 12))
    gamma = model.bn.weight.detach().abs()
    idx = list(range(8))
    assert torch.allclose(BNScale(attention=True)._channel_scores(model.bn, idx), gamma * means["se"])
    assert torch.allclose(BNScale(attention=False)._channel_scores(model.bn, idx), gamma)


def test_cap_prunes_a_torchvision_se_model():
    """capture -> fold -> prune with cap on MobileNetV3: the model is smaller and still runs."""
    from rtdeploy.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    model = _perturb_bns(create_model("tv/mobilenet_v3_small", 3))
    x = images(4, 32)
    fold_attention(model, capture_attention(model, x), x)
    report = prune_model(model, "cap", torch.zeros(1, 3, 32, 32), PruneConfig(ratio=0.5))
    assert report.macs_after < 0.6 * report.macs_before
    with torch.no_grad():
        assert model(x).shape == (4, 3)
