"""Model registry, the paper's SE placement, complexity figures, structure rebuild."""
import pytest
import torch
from torch import nn

from rtdeploy.errors import RegistryError
from rtdeploy.models import (SEBlock, apply_structure, attention_blocks, create_model, describe,
                             list_models)
from rtdeploy.models.complexity import count_macs_params

SIZES = {"tiny": 32, "tiny_se": 32}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_classifies(name):
    model = create_model(name, 7).eval()
    size = SIZES.get(name, 64)  # the paper's 64x64 must work for every real model
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_unknown_model_lists_valid_names():
    with pytest.raises(RegistryError, match="resnet18_se.*tv/"):
        create_model("resnet19", 10)
    with pytest.raises(RegistryError, match="torchvision"):
        create_model("tv/not_a_model", 10)


def test_torchvision_models_get_a_resized_head():
    model = create_model("tv/mobilenet_v2", 21)
    assert model.classifier[-1].out_features == 21


def test_resnet18_se_has_the_papers_17_blocks_in_place():
    names = set(attention_blocks(create_model("resnet18_se", 10)))
    expected = {"se"} | {f"layer{s}.{b}.se{k}" for s in range(1, 5) for b in range(2) for k in (1, 2)}
    assert names == expected
    assert not any("downsample" in n for n in names)
    assert attention_blocks(create_model("resnet18", 10)) == {}


def test_vgg16_se_has_one_block_per_conv_stage():
    model = create_model("vgg16_se", 10)
    assert len(attention_blocks(model)) == 13


def test_resnet18_matches_the_papers_complexity_at_64px():
    # PAPER.md: 11.18 M params (10 classes), 0.149 GMACs at 64x64; UCM at 256: 2.38 GMACs.
    macs, params = count_macs_params(create_model("resnet18", 10), 64)
    assert params == 11_181_642
    assert 0.148e9 < macs < 0.150e9
    macs256, _ = count_macs_params(create_model("resnet18", 21), 256)
    assert 2.37e9 < macs256 < 2.39e9


def test_se_block_computes_x_times_sigmoid_gate():
    se = SEBlock(32).eval()
    x = torch.randn(3, 32, 5, 5)
    s = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3))))))
    assert se.fc1.out_features == 2  # reduction 16
    torch.testing.assert_close(se(x), x * s[:, :, None, None])


def test_structure_rebuilds_a_narrowed_model():
    model = create_model("tiny_se", 5)
    model.layer1[0].se1 = nn.Identity()
    model.fc = nn.Linear(32, 5)
    model.layer2[0].conv1 = nn.Conv2d(16, 24, 3, 2, 1, bias=False)
    model.layer2[0].bn1 = nn.BatchNorm2d(24)
    model.layer2[0].se1 = nn.Identity()
    model.layer2[0].conv2 = nn.Conv2d(24, 32, 3, 1, 1, bias=False)
    structure = describe(model, removed=["layer1.0.se1", "layer2.0.se1"])
    rebuilt = apply_structure(create_model("tiny_se", 5), structure)
    rebuilt.load_state_dict(model.state_dict())  # strict: every shape must match
    assert describe(rebuilt, removed=["layer1.0.se1", "layer2.0.se1"]) == structure
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), rebuilt.eval()(x))


def test_structure_naming_an_unknown_layer_is_rejected():
    with pytest.raises(ValueError, match="lacks"):
        apply_structure(create_model("tiny", 3), {"layers": {"nope": {"type": "bn", "features": 3}}})


class _LayerScaled(nn.Module):
    """ConvNeXt's pattern at toy size: norms whose forward reads their width from attributes
    (LayerNorm2d's normalized_shape, GroupNorm's groups) and a loose per-channel scale."""

    def __init__(self):
        super().__init__()
        from torchvision.models.convnext import LayerNorm2d

        self.conv1, self.ln = nn.Conv2d(3, 16, 3, padding=1), LayerNorm2d(16)
        self.conv2, self.gn = nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.layer_scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.prelu, self.fc = nn.PReLU(16), nn.Linear(16, 4)

    def forward(self, x):
        x = self.ln(self.conv1(x))
        x = x + self.layer_scale * self.gn(self.conv2(x))
        return self.fc(self.prelu(x).mean((2, 3)))


def test_structure_rebuilds_pruned_norms_and_loose_tensors():
    import torch_pruning as tp

    torch.manual_seed(0)
    model, x = _LayerScaled().eval(), torch.randn(2, 3, 8, 8)
    tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[model.fc]).step()
    assert model.layer_scale.shape[0] == 8 and model.ln.normalized_shape == (8,)
    structure = describe(model)
    assert structure["tensors"] == {"layer_scale": [8, 1, 1], "prelu.weight": [8]}
    assert structure["layers"]["gn"] == {"type": "gn", "groups": 4, "features": 8}
    rebuilt = apply_structure(_LayerScaled(), structure)
    rebuilt.load_state_dict(model.state_dict())  # strict: every shape must match
    assert describe(rebuilt) == structure
    assert torch.equal(model(x), rebuilt.eval()(x))


@pytest.fixture(scope="module")
def pruned_convnext(tmp_path_factory):
    """tv/convnext_tiny pruned at 32 px and saved: (its checkpoint, the pruned module)."""
    from rtdeploy.api import prune_channels
    from rtdeploy.checkpoint import ModelMeta, save_checkpoint

    torch.manual_seed(0)
    model = create_model("tv/convnext_tiny", 3).eval()
    prune_channels(model, criterion="l1", img_size=32, ratio=0.5)
    meta = ModelMeta(arch="tv/convnext_tiny", classes=["a", "b", "c"], img_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    path = tmp_path_factory.mktemp("convnext") / "p.pt"
    save_checkpoint(path, model, meta)
    return path, model


def test_pruned_convnext_checkpoint_reloads(pruned_convnext):
    """torch-pruning narrows ConvNeXt's layer_scale and LayerNorms; the checkpoint must rebuild them."""
    from rtdeploy.checkpoint import load_checkpoint

    path, model = pruned_convnext
    rebuilt, _ = load_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("shape", [[5, 1, 1], [0, 1, 1], [48]])
def test_loose_tensor_of_another_width_is_refused_on_load(pruned_convnext, tmp_path, shape):
    """A layer_scale recorded and stored at a width its block does not have (a crafted or
    damaged file): the shapes agree with each other, so only running the rebuilt model shows
    it; load refuses the file instead of every command failing later inside torch."""
    import json

    from rtdeploy.checkpoint import load_checkpoint
    from rtdeploy.errors import CheckpointError

    payload = torch.load(pruned_convnext[0], weights_only=True)
    meta = json.loads(payload["meta"])
    key = "features.1.0.layer_scale"
    assert meta["structure"]["tensors"][key] == [48, 1, 1]
    payload["state_dict"][key] = torch.ones(shape)
    meta["structure"]["tensors"][key] = shape
    payload["meta"] = json.dumps(meta)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="meta.structure"):
        load_checkpoint(tmp_path / "bad.pt")


class _BnAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d pattern: a BatchNorm2d subclass whose forward also applies an activation."""

    def __init__(self, n):
        super().__init__(n)
        self.act = nn.Hardswish()

    def forward(self, x):
        return self.act(super().forward(x))


class _GainConv(nn.Conv2d):
    """timm's ScaledStdConv2d pattern: a Conv2d subclass with its own per-output `gain` tensor."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.gain, self.bias)


class _Subclassed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = _GainConv(3, 16, 3, padding=1), _BnAct(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), _BnAct(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_structure_keeps_layer_subclasses_and_their_own_tensors():
    """Review 3: layers were rebuilt as plain nn.Conv2d/BatchNorm2d, dropping a subclass's forward
    (timm's BatchNormAct2d lost its activation, so a pruned timm/mobilenetv3 checkpoint did not
    reload to the same outputs) and its extra tensors (ScaledStdConv2d's gain)."""
    import torch_pruning as tp

    torch.manual_seed(0)
    model, x = _Subclassed().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.normal_()
    tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                         ignored_layers=[model.fc]).step()
    model.conv1.gain = nn.Parameter(model.conv1.gain[:8].detach().clone())  # torch-pruning leaves it alone
    structure = describe(model)
    assert structure["tensors"] == {"conv1.gain": [8, 1, 1, 1]}
    rebuilt = apply_structure(_Subclassed(), structure)
    assert type(rebuilt.bn1) is _BnAct and type(rebuilt.conv1) is _GainConv
    rebuilt.load_state_dict(model.state_dict())  # strict
    assert describe(rebuilt) == structure
    torch.testing.assert_close(rebuilt.eval()(x), model(x), rtol=0, atol=0)


def test_pruned_timm_checkpoint_reloads(tmp_path):
    pytest.importorskip("timm")
    from rtdeploy.api import prune_channels
    from rtdeploy.checkpoint import ModelMeta, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("timm/mobilenetv3_small_050", 3).eval()
    prune_channels(model, criterion="l1", img_size=32, ratio=0.5)
    meta = ModelMeta(arch="timm/mobilenetv3_small_050", classes=["a", "b", "c"], img_size=32,
                     mean=(0.5,) * 3, std=(0.25,) * 3)
    save_checkpoint(tmp_path / "p.pt", model, meta)
    rebuilt, _ = load_checkpoint(tmp_path / "p.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_loose_tensor_of_another_dtype_is_refused_on_load(pruned_convnext, tmp_path, dtype):
    """Review 3: an int64 layer_scale (its key ends in neither weight nor bias, so the float32
    check let integers through as if an index table) was cast to float silently on load."""
    import json

    from rtdeploy.checkpoint import load_checkpoint
    from rtdeploy.errors import CheckpointError

    payload = torch.load(pruned_convnext[0], weights_only=True)
    key = "features.1.0.layer_scale"
    payload["state_dict"][key] = torch.ones(json.loads(payload["meta"])["structure"]["tensors"][key], dtype=dtype)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="layer_scale"):
        load_checkpoint(tmp_path / "bad.pt")
