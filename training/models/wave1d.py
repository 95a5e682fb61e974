"""1-D PANNs models that read the raw waveform: LeeNet11/24, DaiNet19, Res1dNet31/51.

No log-mel front-end: the (B, L) waveform is reshaped to (B, 1, L), mixed (mixup) right
there in training when ``mixup_lambda`` is given, and fed to a stack of Conv1d blocks.
Global pooling is max + mean over time, followed by the usual fc1/fc_audioset head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from training.models.common import (
    PannsModel,
    do_mixup,
    global_pool_1d,
    init_bn,
    init_layer,
    tagging_head,
)


def _conv1d(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
            dilation: int = 1) -> nn.Conv1d:
    conv = nn.Conv1d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation,
                     bias=False)
    init_layer(conv)
    return conv


def _bn1d(channels: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(channels)
    init_bn(bn)
    return bn


def _lee_pool(x: Tensor) -> Tensor:
    """LeeNet's max_pool1d(kernel 3, stride 3, padding 1): ceil(n / 3), never empty."""
    return F.max_pool1d(x, kernel_size=3, stride=3, padding=1)


class LeeNetConvBlock(nn.Module):
    """Conv1d(k3, pad 1, stride s) -> BN -> ReLU [-> max_pool1d(3, stride 3, pad 1)]."""

    def __init__(self, cin: int, cout: int, stride: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.conv1 = _conv1d(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = _bn1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        return _lee_pool(x) if self.pool else x


class LeeNetConvBlock2(nn.Module):
    """Two Conv1d(k3)+BN+ReLU (the first with stride s) [-> max_pool1d(3, 3, pad 1)]."""

    def __init__(self, cin: int, cout: int, stride: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.conv1 = _conv1d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = _conv1d(cout, cout, 3, padding=1)
        self.bn1 = _bn1d(cout)
        self.bn2 = _bn1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return _lee_pool(x) if self.pool else x


class DaiNetResBlock(nn.Module):
    """Four Conv1d(k3)+BN (ReLU after the first three) plus a shortcut, then ReLU.

    The 1x1 ``downsample`` conv and ``bn_downsample`` always exist (they are checkpoint
    keys) but are used only when the channel count changes; otherwise the shortcut is the
    identity.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv1d(cin, cout, 3, padding=1)
        self.conv2 = _conv1d(cout, cout, 3, padding=1)
        self.conv3 = _conv1d(cout, cout, 3, padding=1)
        self.conv4 = _conv1d(cout, cout, 3, padding=1)
        self.downsample = _conv1d(cin, cout, 1)
        self.bn1 = _bn1d(cout)
        self.bn2 = _bn1d(cout)
        self.bn3 = _bn1d(cout)
        self.bn4 = _bn1d(cout)
        self.bn_downsample = _bn1d(cout)
        self.identity_shortcut = cin == cout  # all convs keep the length: shapes match

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu_(self.bn1(self.conv1(x)))
        y = F.relu_(self.bn2(self.conv2(y)))
        y = F.relu_(self.bn3(self.conv3(y)))
        y = self.bn4(self.conv4(y))
        shortcut = x if self.identity_shortcut else self.bn_downsample(self.downsample(x))
        return F.relu(y + shortcut)


class BasicBlockWav1d(nn.Module):
    """Res1dNet residual block: [max_pool1d(s)] -> conv k3 -> BN -> ReLU -> dropout 0.1
    -> conv k3 dilation 2 -> BN, plus the shortcut, then ReLU.

    Downsampling is a max-pool on the main path but an avg-pool in the shortcut
    (``downsample`` = Sequential(AvgPool1d(s), conv1x1, BN)), as in the checkpoints.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = _conv1d(cin, cout, 3, padding=1)
        self.bn1 = _bn1d(cout)
        self.conv2 = _conv1d(cout, cout, 3, padding=2, dilation=2)
        self.bn2 = _bn1d(cout)
        nn.init.constant_(self.bn2.weight, 0.0)  # residual branch starts as a no-op
        self.downsample: nn.Sequential | None = None
        if stride != 1:
            self.downsample = nn.Sequential(
                nn.AvgPool1d(stride), _conv1d(cin, cout, 1), _bn1d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.max_pool1d(x, kernel_size=self.stride) if self.stride != 1 else x
        out = F.relu_(self.bn1(self.conv1(out)))
        out = F.dropout(out, p=0.1, training=self.training)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetWav1d(nn.Module):
    """Seven layers of ``BasicBlockWav1d`` (the ``resnet`` submodule of Res1dNet31/51)."""

    PLANES = (64, 128, 256, 512, 1024, 1024, 2048)
    STRIDES = (1, 4, 4, 4, 4, 4, 4)

    def __init__(self, blocks: tuple[int, ...]) -> None:
        super().__init__()
        if len(blocks) != len(self.PLANES):
            raise ValueError(f"ResNetWav1d needs {len(self.PLANES)} block counts, got {blocks}")
        cin = 64
        for index, (planes, stride, count) in enumerate(
            zip(self.PLANES, self.STRIDES, blocks, strict=True), start=1
        ):
            layer = [BasicBlockWav1d(cin, planes, stride)]
            layer += [BasicBlockWav1d(planes, planes, 1) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layer))
            cin = planes

    def forward(self, x: Tensor) -> Tensor:
        for index in range(1, len(self.PLANES) + 1):
            x = getattr(self, f"layer{index}")(x)
        return x


class Wave1dModel(PannsModel):
    """Shared forward of the 1-D models: reshape, mixup, ``features``, max+mean, head.

    The constructor takes the zoo's common arguments; the log-mel ones (window, hop, mel
    bins, fmin, fmax) have no meaning for a waveform model and are ignored.
    """

    def __init__(self, sample_rate: int, classes_num: int, min_samples: int) -> None:
        super().__init__(sample_rate, classes_num)
        self.min_samples = min_samples

    def build_head(self, channels: int, embedding_size: int) -> None:
        """``fc1`` (channels -> embedding) and ``fc_audioset``; created last (key order)."""
        self.fc1 = nn.Linear(channels, embedding_size, bias=True)
        self.fc_audioset = nn.Linear(embedding_size, self.classes_num, bias=True)
        init_layer(self.fc1)
        init_layer(self.fc_audioset)

    def features(self, x: Tensor) -> Tensor:
        """(B, 1, L) -> (B, C, T)."""
        raise NotImplementedError

    def forward(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(waveform)
        x = waveform[:, None, :]
        if self.training and mixup_lambda is not None:
            x = do_mixup(x, mixup_lambda)
        x = global_pool_1d(self.features(x))
        return tagging_head(x, self.fc1, self.fc_audioset, training=self.training)


class LeeNet11(Wave1dModel):
    """Nine LeeNetConvBlocks (block 1: stride 3, no pool; blocks 2-9: max-pool 3)."""

    CHANNELS = (64, 64, 64, 128, 128, 128, 128, 128, 256)

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000,
                 classes_num: int = 527) -> None:
        # Every conv (k3, pad 1) and pool (k3, s3, pad 1) maps n >= 1 samples to >= 1 step.
        super().__init__(sample_rate, classes_num, min_samples=1)
        cin = 1
        for index, cout in enumerate(self.CHANNELS, start=1):
            first = index == 1
            block = LeeNetConvBlock(cin, cout, stride=3 if first else 1, pool=not first)
            self.add_module(f"conv_block{index}", block)
            cin = cout
        self.build_head(256, 512)

    def features(self, x: Tensor) -> Tensor:
        for index in range(1, len(self.CHANNELS) + 1):
            x = getattr(self, f"conv_block{index}")(x)
        return x


class LeeNet24(Wave1dModel):
    """Nine LeeNetConvBlock2 (block 1 stride 3; blocks 2-8 max-pool 3); dropout 0.1 between
    blocks (after blocks 1-8, not after block 9, which feeds the global pooling)."""

    CHANNELS = (64, 96, 128, 128, 256, 256, 512, 512, 1024)

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000,
                 classes_num: int = 527) -> None:
        # As LeeNet11: no conv or pool can produce an empty output from n >= 1.
        super().__init__(sample_rate, classes_num, min_samples=1)
        cin = 1
        last = len(self.CHANNELS)
        for index, cout in enumerate(self.CHANNELS, start=1):
            pool = index not in (1, last)
            block = LeeNetConvBlock2(cin, cout, stride=3 if index == 1 else 1, pool=pool)
            self.add_module(f"conv_block{index}", block)
            cin = cout
        self.build_head(1024, 1024)

    def features(self, x: Tensor) -> Tensor:
        last = len(self.CHANNELS)
        for index in range(1, last + 1):
            x = getattr(self, f"conv_block{index}")(x)
            if index != last:
                x = F.dropout(x, p=0.1, training=self.training)
        return x


class DaiNet19(Wave1dModel):
    """conv0 (k80, stride 4) -> bn0 -> four DaiNetResBlocks with max_pool1d(4) between."""

    # conv0 gives (L - 80) // 4 + 1 steps; three max_pool1d(4) need 4**3 = 64 of them:
    # (L - 80) // 4 + 1 >= 64  <=>  L >= 80 + 4 * 63.
    MIN_SAMPLES = 80 + 4 * 63

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000,
                 classes_num: int = 527) -> None:
        super().__init__(sample_rate, classes_num, min_samples=self.MIN_SAMPLES)
        self.conv0 = _conv1d(1, 64, 80, stride=4)
        self.bn0 = _bn1d(64)  # type: ignore[assignment]  # 1-D here, no log-mel bn0
        self.conv_block1 = DaiNetResBlock(64, 64)  # identity shortcut: downsample unused
        self.conv_block2 = DaiNetResBlock(64, 128)
        self.conv_block3 = DaiNetResBlock(128, 256)
        self.conv_block4 = DaiNetResBlock(256, 512)
        self.build_head(512, 512)

    def features(self, x: Tensor) -> Tensor:
        x = self.bn0(self.conv0(x))  # no ReLU here, as in the checkpoints
        x = F.max_pool1d(self.conv_block1(x), kernel_size=4)
        x = F.max_pool1d(self.conv_block2(x), kernel_size=4)
        x = F.max_pool1d(self.conv_block3(x), kernel_size=4)
        return self.conv_block4(x)


class Res1dNet(Wave1dModel):
    """conv0 (k11, stride 5, pad 5) -> bn0 -> ResNetWav1d -> max+mean -> fc1 2048."""

    # conv0 gives (L - 1) // 5 + 1 steps; six stride-4 layers need 4**6 = 4096 of them:
    # (L - 1) // 5 + 1 >= 4096  <=>  L >= 1 + 5 * 4095.
    MIN_SAMPLES = 1 + 5 * 4095

    def __init__(self, blocks: tuple[int, ...], sample_rate: int, classes_num: int) -> None:
        super().__init__(sample_rate, classes_num, min_samples=self.MIN_SAMPLES)
        self.conv0 = _conv1d(1, 64, 11, stride=5, padding=5)
        self.bn0 = _bn1d(64)  # type: ignore[assignment]  # 1-D here, no log-mel bn0
        self.resnet = ResNetWav1d(blocks)
        self.build_head(2048, 2048)

    def features(self, x: Tensor) -> Tensor:
        return self.resnet(self.bn0(self.conv0(x)))  # no ReLU after bn0


class Res1dNet31(Res1dNet):
    """Res1dNet with 2 blocks in each of its 7 layers."""

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000,
                 classes_num: int = 527) -> None:
        super().__init__((2, 2, 2, 2, 2, 2, 2), sample_rate, classes_num)


class Res1dNet51(Res1dNet):
    """Res1dNet with [2, 3, 4, 6, 4, 3, 2] blocks per layer."""

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000,
                 classes_num: int = 527) -> None:
        super().__init__((2, 3, 4, 6, 4, 3, 2), sample_rate, classes_num)
