"""Decision-level (sound event detection) Cnn14 models: framewise and clipwise outputs.

Cnn14's front-end and conv stack -> mean over frequency -> temporal smoothing
(max_pool1d + avg_pool1d, kernel 3, stride 1, pad 1) -> per-segment classifier. Segment scores
are repeated ``interpolate_ratio`` (32) times along time and padded to the log-mel frame count
by repeating the last frame, so ``framewise_output`` has one row per log-mel frame
(``frames_per_second = sample_rate / hop_size``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models.cnn import LogmelCnn, time_downsampling
from training.models.common import FRAMEWISE_OUTPUTS, init_weights


def upsample_frames(segmentwise: Tensor, ratio: int, frames: int) -> Tensor:
    """(B, T', C) -> (B, frames, C): each segment repeated ``ratio`` times, then the last frame
    repeated until ``frames`` rows (``frames >= T' * ratio``).

    Branch-free shape arithmetic so that a traced (ONNX) graph stays valid for every length.
    """
    batch, segments, classes = segmentwise.shape
    upsampled = segmentwise[:, :, None, :].expand(batch, segments, ratio, classes)
    upsampled = upsampled.reshape(batch, segments * ratio, classes)
    last = upsampled[:, -1:, :].expand(batch, frames - segments * ratio, classes)
    return torch.cat((upsampled, last), dim=1)


def smooth_time(x: Tensor) -> Tensor:
    """(B, C, T) -> (B, C, T): max_pool1d + avg_pool1d (k 3, stride 1, pad 1, zero pad counted;
    max pads with -inf)."""
    x1 = F.max_pool1d(x, kernel_size=3, stride=1, padding=1)
    x2 = F.avg_pool1d(x, kernel_size=3, stride=1, padding=1, count_include_pad=True)
    return x1 + x2


class AttBlock(nn.Module):
    """Attention pooling over time: softmax(clamp(att(x))) weighted sum of sigmoid(cla(x)).

    ``bn_att`` exists only so the official checkpoints load; it is not used in forward.
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.att = nn.Conv1d(n_in, n_out, kernel_size=1, stride=1, padding=0, bias=True)
        self.cla = nn.Conv1d(n_in, n_out, kernel_size=1, stride=1, padding=0, bias=True)
        self.bn_att = nn.BatchNorm1d(n_out)
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, T) -> clipwise (B, n_out), segmentwise (B, n_out, T)."""
        norm_att = torch.softmax(torch.clamp(self.att(x), -10, 10), dim=-1)
        cla = torch.sigmoid(self.cla(x))
        return torch.sum(norm_att * cla, dim=2), cla


class _DecisionLevelCnn14(LogmelCnn):
    output_names = FRAMEWISE_OUTPUTS

    def __init__(
        self, sample_rate: int, window_size: int, hop_size: int, mel_bins: int,
        fmin: float, fmax: float, classes_num: int,
    ) -> None:
        super().__init__(sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num)
        self.interpolate_ratio = time_downsampling(self.pools)
        self.frames_per_second = sample_rate / hop_size
        self.fc1 = nn.Linear(self.channels[-1], self.channels[-1], bias=True)
        self.build_classifier(classes_num)
        init_weights(self)

    def build_classifier(self, classes_num: int) -> None:
        self.fc_audioset = nn.Linear(self.channels[-1], classes_num, bias=True)

    def segment_features(self, waveform: Tensor, mixup_lambda: Tensor | None) -> tuple[Tensor, int]:
        """Waveform -> smoothed (B, T', C) features and the log-mel frame count."""
        x = self.logmel_features(waveform, mixup_lambda)
        frames = x.shape[2]  # no int(): keeps the frame count traced when exporting
        x = torch.mean(self.conv_features(x), dim=3)
        x = F.dropout(smooth_time(x), p=0.5, training=self.training)
        return x.transpose(1, 2), frames

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T', C) -> clipwise (B, classes), segmentwise (B, T', classes)."""
        raise NotImplementedError

    def forward(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(waveform)
        x, frames = self.segment_features(waveform, mixup_lambda)
        clipwise, segmentwise = self.classify(x)
        framewise = upsample_frames(segmentwise, self.interpolate_ratio, frames)
        return {"clipwise_output": clipwise, "framewise_output": framewise}


class _PooledDecisionLevel(_DecisionLevelCnn14):
    def segmentwise(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=0.5, training=self.training)
        return torch.sigmoid(self.fc_audioset(x))


class Cnn14_DecisionLevelMax(_PooledDecisionLevel):
    """Clipwise output = max over time of the segment scores."""

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        segmentwise = self.segmentwise(x)
        return torch.amax(segmentwise, dim=1), segmentwise


class Cnn14_DecisionLevelAvg(_PooledDecisionLevel):
    """Clipwise output = mean over time of the segment scores."""

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        segmentwise = self.segmentwise(x)
        return torch.mean(segmentwise, dim=1), segmentwise


class Cnn14_DecisionLevelAtt(_DecisionLevelCnn14):
    """Clipwise output = attention-weighted sum over time (AttBlock)."""

    def build_classifier(self, classes_num: int) -> None:
        self.att_block = AttBlock(self.channels[-1], classes_num)

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=0.5, training=self.training)
        clipwise, cla = self.att_block(x.transpose(1, 2))
        return clipwise, cla.transpose(1, 2)
