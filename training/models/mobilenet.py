"""MobileNetV1 / MobileNetV2 on the log-mel spectrogram (PANNs variants).

Unlike torchvision's MobileNets, every conv has stride 1: downsampling is an
``AvgPool2d(stride)`` placed right after the 3x3 (depthwise) conv, and ``AvgPool2d(1)`` is
kept as an identity layer so that the Sequential indices (and the checkpoint keys such as
``features.3.4.weight``) match the published models.
"""

from __future__ import annotations

from torch import Tensor, nn

from training.models.common import (
    PannsModel,
    batch_norm2d,
    global_pool_2d,
    init_layer,
    logmel_min_samples,
    same_conv2d,
    tagging_head,
)

# five stride-2 stages: time and frequency are both reduced 32x
DOWNSAMPLING = 32


def conv_bn(cin: int, cout: int, stride: int, act: type[nn.Module]) -> nn.Sequential:
    """The stem: [conv3x3, AvgPool2d(stride), BN, activation] (params at 0 and 2)."""
    return nn.Sequential(same_conv2d(cin, cout, 3), nn.AvgPool2d(stride), batch_norm2d(cout),
                         act(inplace=True))


def conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNetV1 separable block: depthwise 3x3, AvgPool2d(s), BN, ReLU, 1x1, BN, ReLU."""
    return nn.Sequential(
        same_conv2d(cin, cin, 3, groups=cin), nn.AvgPool2d(stride), batch_norm2d(cin),
        nn.ReLU(inplace=True),
        same_conv2d(cin, cout, 1), batch_norm2d(cout), nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block; ``conv`` is the Sequential whose indices the checkpoints use."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(cin * expand_ratio)
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [same_conv2d(cin, hidden, 1), batch_norm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            same_conv2d(hidden, hidden, 3, groups=hidden), nn.AvgPool2d(stride),
            batch_norm2d(hidden), nn.ReLU6(inplace=True), same_conv2d(hidden, cout, 1),
            batch_norm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


# (in, out, stride) of the 13 separable blocks of MobileNetV1
V1_BLOCKS = (
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
    (512, 1024, 2), (1024, 1024, 1),
)
# (expand ratio t, out channels c, repeats n, stride s of the first repeat) of MobileNetV2
V2_SETTINGS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 2),
    (6, 160, 3, 1), (6, 320, 1, 1),
)


def mobilenet_v1_features() -> nn.Sequential:
    layers = [conv_bn(1, 32, 2, nn.ReLU)]
    layers += [conv_dw(cin, cout, stride) for cin, cout, stride in V1_BLOCKS]
    return nn.Sequential(*layers)


def mobilenet_v2_features() -> nn.Sequential:
    layers: list[nn.Module] = [conv_bn(1, 32, 2, nn.ReLU6)]
    cin = 32
    for t, c, n, s in V2_SETTINGS:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(nn.Sequential(same_conv2d(cin, 1280, 1), batch_norm2d(1280),
                                nn.ReLU6(inplace=True)))
    return nn.Sequential(*layers)


class _MobileNet(PannsModel):
    """log-mel -> bn0 -> ``features`` -> mean freq, max+mean time -> fc1 1024 -> fc_audioset."""

    feature_channels = 1024
    head_dropout = 0.5  # dropout on the pooled features before fc1 (training only)

    def __init__(self, sample_rate: int = 32000, window_size: int = 1024, hop_size: int = 320,
                 mel_bins: int = 64, fmin: float = 50, fmax: float = 14000,
                 classes_num: int = 527) -> None:
        super().__init__(sample_rate, classes_num)
        if mel_bins < DOWNSAMPLING:
            raise ValueError(f"{type(self).__name__} needs mel_bins >= {DOWNSAMPLING}")
        self.build_logmel_frontend(window_size, hop_size, mel_bins, fmin, fmax)
        self.features = self.build_features()
        self.fc1 = nn.Linear(self.feature_channels, 1024, bias=True)
        self.fc_audioset = nn.Linear(1024, classes_num, bias=True)
        init_layer(self.fc1)
        init_layer(self.fc_audioset)
        self.min_samples = logmel_min_samples(DOWNSAMPLING, window_size, hop_size)

    def build_features(self) -> nn.Sequential:
        raise NotImplementedError

    def forward(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(waveform)
        x = self.features(self.logmel_features(waveform, mixup_lambda))
        return tagging_head(global_pool_2d(x), self.fc1, self.fc_audioset,
                            training=self.training, dropout_in=self.head_dropout)


class MobileNetV1(_MobileNet):
    """Stem + 13 depthwise-separable blocks, 1024 channels."""

    def build_features(self) -> nn.Sequential:
        return mobilenet_v1_features()


class MobileNetV2(_MobileNet):
    """Stem + 17 inverted residuals + 1x1 conv to 1280 channels; no dropout before fc1."""

    feature_channels = 1280
    head_dropout = 0.0

    def build_features(self) -> nn.Sequential:
        return mobilenet_v2_features()
