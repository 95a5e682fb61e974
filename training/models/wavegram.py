"""Wavegram models: a learned 1-D front-end on the waveform ("wavegram"), alone or beside log-mel.

Wavegram branch: pre_conv0 (k 11, stride 5, pad 5) -> pre_bn0 -> ReLU -> three ConvPreWavBlocks
(each pools time by 4) -> (B, 4*F, T) reshaped to (B, 4, F, T) and transposed to (B, 4, T, F)
-> pre_block4 (ConvBlock 4->64, avg pool (2, 1)). Time downsampling 5*4*4*4*2 = 640 samples,
the same as the log-mel branch after conv_block1 (hop 320, pool 2).

Length alignment: the log-mel branch has ``(L // 320 + 1) // 2`` steps and the wavegram branch
``((L - 1) // 5 + 1) // 64 // 2``. They agree for 10 s and 3 s input but differ by one step for
other lengths (e.g. ``L // 320`` odd); the reference would fail to concatenate there. We crop
both branches to the shorter one (dropping the last step of the longer branch) before
concatenating, so every length >= ``min_samples`` works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.cnn import CNN14_CHANNELS, build_conv_blocks
from training.models.common import (
    ConvBlock,
    PannsModel,
    do_mixup,
    global_pool_2d,
    init_weights,
    logmel_min_samples,
    tagging_head,
)

WAVEGRAM_GROUPS = 4
# conv_block2..6 pooling as in Cnn14: four (2, 2) then (1, 1)
LATE_POOLS = ((2, 2), (2, 2), (2, 2), (2, 2), (1, 1))


class ConvPreWavBlock(nn.Module):
    """conv1 (k3, pad 1) -> BN -> ReLU -> conv2 (k3, dilation 2, pad 2) -> BN -> ReLU -> pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, stride=1, dilation=2, padding=2,
                               bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.bn2 = nn.BatchNorm1d(out_channels)
        init_weights(self)

    def forward(self, x: Tensor, pool_size: int = 4) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool1d(x, kernel_size=pool_size)


def wavegram_min_samples(steps: int) -> int:
    """Shortest waveform whose wavegram (after pre_block4) has at least ``steps`` time steps.

    pre_conv0 gives ``(L - 1) // 5 + 1`` frames; three max pools by 4 and the (2, 1) pool
    need ``steps * 128`` of them.
    """
    return 5 * (steps * 128 - 1) + 1


class _WavegramBase(PannsModel):
    """Builds the wavegram branch (``pre_*`` modules come first in the checkpoint)."""

    wavegram_freq: int = 32  # pseudo-frequency bins of the wavegram
    uses_logmel: bool = True

    def __init__(
        self, sample_rate: int, window_size: int, hop_size: int, mel_bins: int,
        fmin: float, fmax: float, classes_num: int,
    ) -> None:
        super().__init__(sample_rate, classes_num)
        wave_channels = WAVEGRAM_GROUPS * self.wavegram_freq
        self.pre_conv0 = nn.Conv1d(1, 64, kernel_size=11, stride=5, padding=5, bias=False)
        self.pre_bn0 = nn.BatchNorm1d(64)
        self.pre_block1 = ConvPreWavBlock(64, 64)
        self.pre_block2 = ConvPreWavBlock(64, 128)
        self.pre_block3 = ConvPreWavBlock(128, wave_channels)
        self.pre_block4 = ConvBlock(WAVEGRAM_GROUPS, 64)
        if self.uses_logmel:
            if mel_bins != 2 * self.wavegram_freq:
                raise ValueError(f"{type(self).__name__} needs mel_bins={2 * self.wavegram_freq}")
            self.build_logmel_frontend(window_size, hop_size, mel_bins, fmin, fmax)
        else:  # Wavegram_Cnn14 keeps an unused bn0 for checkpoint compatibility
            self.bn0 = nn.BatchNorm2d(mel_bins)
        in_block2 = 128 if self.uses_logmel else 64
        self.conv_block1 = ConvBlock(1, 64)
        build_conv_blocks(self, CNN14_CHANNELS[1:], in_channels=in_block2, first_index=2)
        self.fc1 = nn.Linear(CNN14_CHANNELS[-1], CNN14_CHANNELS[-1], bias=True)
        self.fc_audioset = nn.Linear(CNN14_CHANNELS[-1], classes_num, bias=True)
        init_weights(self)
        self.min_samples = wavegram_min_samples(16)
        if self.uses_logmel:
            self.min_samples = max(self.min_samples, logmel_min_samples(32, window_size, hop_size))

    def wavegram(self, waveform: Tensor) -> Tensor:
        """(B, L) -> (B, 64, T, wavegram_freq) with T = ((L - 1) // 5 + 1) // 64 // 2."""
        x = F.relu(self.pre_bn0(self.pre_conv0(waveform[:, None, :])))
        x = self.pre_block1(x, pool_size=4)
        x = self.pre_block2(x, pool_size=4)
        x = self.pre_block3(x, pool_size=4)
        x = x.reshape(x.shape[0], WAVEGRAM_GROUPS, self.wavegram_freq, x.shape[-1])
        return self.pre_block4(x.transpose(2, 3), pool_size=(2, 1), pool_type="avg")

    def late_blocks(self, x: Tensor) -> dict[str, Tensor]:
        """conv_block2..6 with dropout, then the Cnn14 head."""
        for index, pool in enumerate(LATE_POOLS, start=2):
            x = getattr(self, f"conv_block{index}")(x, pool_size=pool, pool_type="avg")
            x = F.dropout(x, p=0.2, training=self.training)
        return tagging_head(global_pool_2d(x), self.fc1, self.fc_audioset, training=self.training)


class Wavegram_Cnn14(_WavegramBase):
    """Wavegram only: pre_block4's output goes straight into conv_block2.

    ``bn0`` and ``conv_block1`` exist (the official checkpoint has them) but are unused; there is
    no log-mel front-end and no SpecAugment.
    """

    uses_logmel = False

    def forward(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(waveform)
        x = self.wavegram(waveform)
        if self.training and mixup_lambda is not None:
            x = do_mixup(x, mixup_lambda)
        return self.late_blocks(x)


class Wavegram_Logmel_Cnn14(_WavegramBase):
    """Log-mel (bn0, SpecAugment, conv_block1) and wavegram concatenated on channels."""

    def forward(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(waveform)
        wave = self.wavegram(waveform)
        if self.training and mixup_lambda is not None:
            wave = do_mixup(wave, mixup_lambda)
        x = self.logmel_features(waveform, mixup_lambda)
        x = self.conv_block1(x, pool_size=(2, 2), pool_type="avg")
        # crop each branch to the other's length (branch-free, so traced graphs stay general)
        x, wave = x[:, :, : wave.shape[2]], wave[:, :, : x.shape[2]]
        x = torch.cat((x, wave), dim=1)
        x = F.dropout(x, p=0.2, training=self.training)
        return self.late_blocks(x)


class Wavegram_Logmel128_Cnn14(Wavegram_Logmel_Cnn14):
    """128 mel bins; pre_block3 has 256 channels, reshaped to 4 groups x 64 bins."""

    wavegram_freq = 64
