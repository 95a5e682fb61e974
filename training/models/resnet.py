"""ResNet22 / ResNet38 / ResNet54 on the log-mel spectrogram (PANNs variants).

Stride 2 is never a strided conv here: a stride-2 block average-pools its input (2x2)
first and all its convs have stride 1; its shortcut is Sequential(AvgPool2d(2), conv1x1,
BN) (checkpoint keys ``downsample.1`` / ``downsample.2``). A stride-1 block that changes the
channel count (ResNet54 layer1) uses Sequential(conv1x1, BN) (``downsample.0`` / ``.1``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from training.models.common import (
    ConvBlock,
    PannsModel,
    batch_norm2d,
    global_pool_2d,
    init_layer,
    logmel_min_samples,
    same_conv2d,
    tagging_head,
)

# conv_block1 pool, layers 2-4 and the pool before conv_block_after1 each halve time and freq
DOWNSAMPLING = 32


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 2:
        return nn.Sequential(nn.AvgPool2d(2), same_conv2d(cin, cout, 1), batch_norm2d(cout))
    if stride != 1:
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if cin != cout:
        return nn.Sequential(same_conv2d(cin, cout, 1), batch_norm2d(cout))
    return None


class BasicBlock(nn.Module):
    """[avgpool 2x2] -> conv3x3 -> BN -> ReLU -> dropout 0.1 -> conv3x3 -> BN; + shortcut; ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = same_conv2d(cin, planes, 3)
        self.bn1 = batch_norm2d(planes)
        self.conv2 = same_conv2d(planes, planes, 3)
        self.bn2 = batch_norm2d(planes, zero=True)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.avg_pool2d(x, kernel_size=2) if self.stride == 2 else x
        out = F.relu_(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """[avgpool] -> 1x1 -> BN -> ReLU -> 3x3 -> BN -> ReLU -> dropout 0.1 -> 1x1 (x4) -> BN."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        out = planes * self.expansion
        self.conv1 = same_conv2d(cin, planes, 1)
        self.bn1 = batch_norm2d(planes)
        self.conv2 = same_conv2d(planes, planes, 3)
        self.bn2 = batch_norm2d(planes)
        self.conv3 = same_conv2d(planes, out, 1)
        self.bn3 = batch_norm2d(out, zero=True)
        self.downsample = _shortcut(cin, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.avg_pool2d(x, kernel_size=2) if self.stride == 2 else x
        out = F.relu_(self.bn1(self.conv1(out)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet2d(nn.Module):
    """layer1..layer4 (planes 64/128/256/512, strides 1/2/2/2): the ``resnet`` submodule."""

    PLANES = (64, 128, 256, 512)
    STRIDES = (1, 2, 2, 2)

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, ...]) -> None:
        super().__init__()
        cin = 64
        for index, (planes, stride, count) in enumerate(
            zip(self.PLANES, self.STRIDES, layers, strict=True), start=1
        ):
            blocks: list[nn.Module] = [block(cin, planes, stride)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        for index in range(1, len(self.PLANES) + 1):
            x = getattr(self, f"layer{index}")(x)
        return x


class _ResNetTagger(PannsModel):
    """log-mel -> bn0 -> ConvBlock(1->64, avg 2x2) -> ResNet2d -> avg 2x2 -> ConvBlock(->2048)
    -> mean freq, max+mean time -> fc1 2048 -> fc_audioset. Dropout 0.2 after each stage."""

    block: type[BasicBlock | Bottleneck] = BasicBlock
    layers: tuple[int, ...] = (2, 2, 2, 2)

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000,
                 classes_num: int = 527) -> None:
        super().__init__(sample_rate, classes_num)
        if mel_bins < DOWNSAMPLING:
            raise ValueError(f"{type(self).__name__} needs mel_bins >= {DOWNSAMPLING}")
        self.build_logmel_frontend(window_size, hop_size, mel_bins, fmin, fmax)
        self.conv_block1 = ConvBlock(1, 64)
        self.resnet = ResNet2d(self.block, self.layers)
        self.conv_block_after1 = ConvBlock(self.resnet.out_channels, 2048)
        self.fc1 = nn.Linear(2048, 2048, bias=True)
        self.fc_audioset = nn.Linear(2048, classes_num, bias=True)
        init_layer(self.fc1)
        init_layer(self.fc_audioset)
        self.min_samples = logmel_min_samples(DOWNSAMPLING, window_size, hop_size)

    def forward(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(waveform)
        x = self.logmel_features(waveform, mixup_lambda)
        x = self.conv_block1(x, pool_size=(2, 2), pool_type="avg")
        x = F.dropout(x, p=0.2, training=self.training)
        x = F.avg_pool2d(self.resnet(x), kernel_size=2)
        x = F.dropout(x, p=0.2, training=self.training)
        x = self.conv_block_after1(x, pool_size=(1, 1), pool_type="avg")
        x = F.dropout(x, p=0.2, training=self.training)
        return tagging_head(global_pool_2d(x), self.fc1, self.fc_audioset, training=self.training)


class ResNet22(_ResNetTagger):
    """BasicBlocks [2, 2, 2, 2]."""


class ResNet38(_ResNetTagger):
    """BasicBlocks [3, 4, 6, 3]."""

    layers = (3, 4, 6, 3)


class ResNet54(_ResNetTagger):
    """Bottlenecks [3, 4, 6, 3] (conv_block_after1 is 2048 -> 2048)."""

    block = Bottleneck
    layers = (3, 4, 6, 3)
