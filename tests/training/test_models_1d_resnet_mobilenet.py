"""Architecture-specific checks for the 1-D, ResNet and MobileNet models of the zoo.

The generic checks (keys/shapes vs the manifest, output shapes for all 29 names) live in
test_models.py; here: the parity fixtures of MobileNetV1 and Res1dNet31, the analytic minimum
lengths (and that they are tight), and block-structure facts that no fixture covers.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import reference_fill, reference_manifest, shared_path
from training.models import create_model
from training.models.mobilenet import InvertedResidual
from training.models.resnet import BasicBlock, Bottleneck
from training.models.wave1d import BasicBlockWav1d

SMALL = ["LeeNet11", "DaiNet19", "MobileNetV1", "MobileNetV2", "ResNet22"]
BIG = ["LeeNet24", "Res1dNet31", "Res1dNet51", "ResNet38", "ResNet54"]
MIN_SAMPLES = {  # at 32 kHz / hop 320; derivations in the model modules
    "LeeNet11": 1,
    "LeeNet24": 1,
    "DaiNet19": 80 + 4 * 63,
    "Res1dNet31": 1 + 5 * 4095,
    "Res1dNet51": 1 + 5 * 4095,
    "ResNet22": 31 * 320,
    "ResNet38": 31 * 320,
    "ResNet54": 31 * 320,
    "MobileNetV1": 31 * 320,
    "MobileNetV2": 31 * 320,
}
ALL = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in MIN_SAMPLES]


@pytest.fixture(scope="module")
def fill() -> ModuleType:
    return reference_fill()


def _filled(name: str, fill: ModuleType, gain: float = 1.0) -> nn.Module:
    model = create_model(name)
    model.load_state_dict(fill.fill_state_dict(model.state_dict(), gain), strict=True)
    return model.eval()


@pytest.mark.parametrize(
    "name", ["MobileNetV1", pytest.param("Res1dNet31", marks=pytest.mark.slow)]
)
def test_parity_with_reference_fixture(name: str, fill: ModuleType) -> None:
    manifest = reference_manifest()
    fixture = np.load(shared_path("reference", "parity", f"{name}.npz"))
    model = _filled(name, fill, manifest[name]["gain"])
    for input_name, waveform in fill.make_inputs(32000).items():
        with torch.no_grad():
            out = model(torch.from_numpy(waveform))
        np.testing.assert_allclose(
            out["clipwise_output"].numpy(),
            fixture[f"{input_name}__clipwise_output"],
            atol=2e-5,
            rtol=0,
        )
        np.testing.assert_allclose(
            out["embedding"].numpy(), fixture[f"{input_name}__embedding"], atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("name", ALL)
def test_min_samples_is_exact_and_tight(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    n = model.min_samples
    assert n == MIN_SAMPLES[name]
    with torch.no_grad():
        out = model(0.1 * torch.randn(1, n))
        assert out["clipwise_output"].shape == (1, 527)
        assert torch.isfinite(out["embedding"]).all()
        if n == 1:
            return
        with pytest.raises(ValueError, match=f"at least {n} samples"):
            model(torch.zeros(1, n - 1))
        model.min_samples = 1  # disable the guard: the network itself must fail at n - 1
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, n - 1))


@pytest.mark.parametrize("name", ["ResNet22", "MobileNetV2"])
def test_2d_min_samples_follows_the_hop(name: str) -> None:
    model = create_model(name, sample_rate=16000, window_size=512, hop_size=160, fmax=8000)
    assert model.min_samples == 31 * 160  # 32 frames (x32 downsampling), frames = L // hop + 1
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 31 * 160))["clipwise_output"].shape == (1, 527)
        model.min_samples = 1
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 31 * 160 - 1))


@pytest.mark.parametrize("name", ["ResNet22", "MobileNetV1"])
def test_2d_models_refuse_too_few_mel_bins(name: str) -> None:
    with pytest.raises(ValueError, match="mel_bins >= 32"):
        create_model(name, mel_bins=16)


def test_dainet_first_block_uses_identity_shortcut(fill: ModuleType) -> None:
    """conv_block1.downsample / bn_downsample exist for loading but never act (64 -> 64)."""
    model = _filled("DaiNet19", fill)
    x = torch.from_numpy(fill.make_inputs(32000)["b1_3s"][:, :4000].copy())
    with torch.no_grad():
        before = model(x)["clipwise_output"]
        model.conv_block1.downsample.weight.mul_(3.0)
        model.conv_block1.bn_downsample.bias.add_(1.0)
        assert torch.equal(model(x)["clipwise_output"], before)
        model.conv_block2.downsample.weight.mul_(3.0)  # 64 -> 128: projection in use
        assert not torch.allclose(model(x)["clipwise_output"], before)


def test_res1d_block_pools_max_in_main_path_and_avg_in_shortcut() -> None:
    block = BasicBlockWav1d(8, 16, stride=4).eval()
    assert block.downsample is not None
    pool, conv, bn = block.downsample
    assert isinstance(pool, nn.AvgPool1d) and pool.kernel_size == (4,)
    assert conv.kernel_size == (1,) and isinstance(bn, nn.BatchNorm1d)
    assert block.conv2.dilation == (2,) and block.conv2.padding == (2,)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 20)
    window_max = F.max_pool1d(x, 4).repeat_interleave(4, dim=2)
    window_mean = F.avg_pool1d(x, 4).repeat_interleave(4, dim=2)
    same_max = torch.where(x == window_max, x, x - 1.0)  # other window means
    same_mean = window_mean + 2.0 * (x - window_mean)  # other window maxima
    with torch.no_grad():
        assert block(torch.randn(2, 8, 23)).shape == (2, 16, 5)  # floor(23 / 4)
        for param in (block.bn2.weight, block.bn2.bias, bn.weight, bn.bias):
            param.normal_()
        nn.init.zeros_(bn.weight)  # shortcut silenced: only the main path is left
        nn.init.zeros_(bn.bias)
        torch.testing.assert_close(block(same_max), block(x))
        assert not torch.allclose(block(same_mean), block(x))
        bn.weight.fill_(1.0)  # now silence the main path instead: only the shortcut
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
        torch.testing.assert_close(block(same_mean), block(x))
        assert not torch.allclose(block(same_max), block(x))


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
def test_resnet_stride2_block_uses_avgpool_not_strided_conv(block_cls: type) -> None:
    block = block_cls(64, 32, 2).eval()
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            assert module.stride == (1, 1)
    assert block.downsample is not None
    assert isinstance(block.downsample[0], nn.AvgPool2d)
    with torch.no_grad():
        assert block(torch.randn(1, 64, 9, 7)).shape == (1, 32 * block_cls.expansion, 4, 3)
    first = block_cls(64, 64, 1)
    assert (first.downsample is None) == (block_cls is BasicBlock)  # Bottleneck: 64 -> 256
    if first.downsample is not None:
        assert isinstance(first.downsample[0], nn.Conv2d)


def test_mobilenets_downsample_by_avgpool_after_the_3x3_conv() -> None:
    for name in ("MobileNetV1", "MobileNetV2"):
        model = create_model(name)
        convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
        assert all(c.stride == (1, 1) for c in convs)
        pools = [m for m in model.features.modules() if isinstance(m, nn.AvgPool2d)]
        assert sorted({p.kernel_size for p in pools}) == [1, 2]
        assert sum(p.kernel_size == 2 for p in pools) == 5
    v2 = create_model("MobileNetV2")
    residual = [m for m in v2.features if isinstance(m, InvertedResidual) and m.use_residual]
    assert len(residual) == 10  # stride 1 with equal in/out channels: 1+2+3+2+2 blocks


def test_1d_mixup_mixes_the_waveform() -> None:
    """The 1-D models mix right after the reshape: mixing two clips with lambda (l, 1-l)
    equals feeding the mixed waveform (same dropout draws, batch-statistics BN)."""
    torch.manual_seed(0)
    model = create_model("LeeNet11").train()
    x = 0.1 * torch.randn(4, 3000)
    lam = torch.tensor([0.3, 0.7, 0.9, 0.1])
    torch.manual_seed(1)
    mixed = model(x, mixup_lambda=lam)
    torch.manual_seed(1)
    direct = model(torch.stack([0.3 * x[0] + 0.7 * x[1], 0.9 * x[2] + 0.1 * x[3]]))
    assert mixed["clipwise_output"].shape == (2, 527)
    torch.testing.assert_close(mixed["embedding"], direct["embedding"], atol=1e-5, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        assert model(x, mixup_lambda=lam)["embedding"].shape == (4, 512)  # eval: no mixup


@pytest.mark.parametrize("name", ["DaiNet19", "MobileNetV1", "ResNet22"])
def test_dropout_only_in_training(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = 0.1 * torch.randn(2, 16000)
    model.train()
    a = model(x)["embedding"]
    b = model(x)["embedding"]
    assert not torch.allclose(a, b)
    a.sum().backward()  # trainable end to end
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)["embedding"], model(x)["embedding"])
