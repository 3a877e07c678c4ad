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
