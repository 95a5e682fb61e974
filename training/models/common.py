"""Shared building blocks of the PANNs zoo.

What this module offers (the other model modules import these names):

* ``PannsModel``: base ``nn.Module`` of every zoo model. Holds ``sample_rate``, ``min_samples``,
  ``classes_num``, ``output_names`` and validates input with ``check_input`` (a ``ValueError`` that
  names the minimum length, wrong rank or dtype). Log-mel models call ``build_logmel_frontend`` in
  their constructor (at the point where the checkpoint's key order wants it) and
  ``logmel_features`` in ``forward``: STFT -> log-mel -> bn0 -> SpecAugment (training) -> mixup.
* ``do_mixup``: the recipe's batch-pair mixup (returns B/2 rows).
* ``ConvBlock`` / ``ConvBlock5x5``: the 2-D conv blocks of the CNN family.
* ``pool2d``: the blocks' non-overlapping local pooling ((1, 1) is the identity).
* ``global_pool_2d`` / ``global_pool_1d`` / ``tagging_head``: global pooling and the
  fc1 -> ReLU -> fc_audioset head that produces ``embedding`` and ``clipwise_output``.
* ``init_layer`` / ``init_bn`` / ``init_weights``: the reference initialisation (Xavier-uniform
  convs and linears, zero biases, BatchNorm weight 1 / bias 0), leaving the front-end untouched.
* ``logmel_min_samples``: the shortest waveform giving at least N log-mel frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchlibrosa.augmentation import SpecAugmentation
from torchlibrosa.stft import LogmelFilterBank, Spectrogram

FRONTEND_MODULES = ("spectrogram_extractor", "logmel_extractor")
TAGGING_OUTPUTS: tuple[str, ...] = ("clipwise_output", "embedding")
FRAMEWISE_OUTPUTS: tuple[str, ...] = ("clipwise_output", "framewise_output")


def init_layer(layer: nn.Module) -> None:
    """Xavier-uniform weight and zero bias for a conv or linear layer."""
    weight = getattr(layer, "weight", None)
    if isinstance(weight, Tensor):
        nn.init.xavier_uniform_(weight)
    bias = getattr(layer, "bias", None)
    if isinstance(bias, Tensor):
        nn.init.zeros_(bias)


def init_bn(bn: nn.Module) -> None:
    """BatchNorm weight 1, bias 0 (running stats keep their defaults)."""
    if isinstance(bn.weight, Tensor):
        nn.init.ones_(bn.weight)
    if isinstance(bn.bias, Tensor):
        nn.init.zeros_(bn.bias)


def same_conv2d(cin: int, cout: int, kernel: int, groups: int = 1) -> nn.Conv2d:
    """Stride-1, size-preserving, bias-free conv, initialised like init_layer (ResNets and
    MobileNets build every conv this way)."""
    conv = nn.Conv2d(cin, cout, kernel, stride=1, padding=kernel // 2, groups=groups,
                     bias=False)
    init_layer(conv)
    return conv


def batch_norm2d(channels: int, zero: bool = False) -> nn.BatchNorm2d:
    """BatchNorm2d initialised like init_bn; ``zero``: weight 0, so that a residual branch
    ending in it starts as the identity."""
    bn = nn.BatchNorm2d(channels)
    init_bn(bn)
    if zero:
        nn.init.constant_(bn.weight, 0.0)
    return bn


def init_weights(model: nn.Module) -> None:
    """Initialise every conv/linear/BN of ``model`` except the frozen STFT/mel front-end."""
    for name, module in model.named_modules():
        if any(part in FRONTEND_MODULES for part in name.split(".")):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            init_layer(module)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init_bn(module)


def do_mixup(x: Tensor, mixup_lambda: Tensor) -> Tensor:
    """Mix consecutive batch pairs: ``x[0::2] * lam[0::2] + x[1::2] * lam[1::2]``.

    The recipe draws one lambda per pair and passes ``[lam, 1 - lam, ...]``; the output has
    half the rows of ``x``. Works for any rank (mixing is along the batch axis only).
    """
    batch = x.shape[0]
    if batch % 2 != 0:
        raise ValueError(f"mixup needs an even batch size, got {batch}")
    if mixup_lambda.shape != (batch,):
        raise ValueError(
            f"mixup_lambda must have shape ({batch},), got {tuple(mixup_lambda.shape)}"
        )
    lam = mixup_lambda.to(dtype=x.dtype, device=x.device)
    lam = lam.reshape((batch,) + (1,) * (x.dim() - 1))
    return x[0::2] * lam[0::2] + x[1::2] * lam[1::2]


def logmel_min_samples(frames: int, window_size: int, hop_size: int) -> int:
    """Shortest waveform with at least ``frames`` centred STFT frames (``L // hop + 1``).

    Reflect padding by ``window_size // 2`` also needs ``L > window_size // 2``.
    """
    return max((frames - 1) * hop_size, window_size // 2 + 1, 1)


class PannsModel(nn.Module):
    """Base class: model metadata, input validation and the optional log-mel front-end."""

    output_names: tuple[str, ...] = TAGGING_OUTPUTS

    def __init__(self, sample_rate: int, classes_num: int) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.classes_num = int(classes_num)
        self.min_samples = 1  # subclasses set the real minimum

    # ------------------------------------------------------------------ input checking
    def check_input(self, waveform: Tensor) -> None:
        """Raise ``ValueError`` for input the network cannot process.

        Skipped while tracing/exporting so the check does not become a shape guard; exporters
        should declare the dynamic length with ``min=model.min_samples``.
        """
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if not isinstance(waveform, Tensor):
            raise ValueError(f"{type(self).__name__} expects a torch.Tensor waveform")
        if waveform.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} expects a (batch, samples) waveform, "
                f"got shape {tuple(waveform.shape)}"
            )
        if not waveform.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expects a float32 waveform, got {waveform.dtype}"
            )
        if waveform.shape[0] < 1:
            raise ValueError(f"{type(self).__name__} got an empty batch")
        length = int(waveform.shape[1])
        if length < self.min_samples:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_samples} samples "
                f"({self.min_samples / self.sample_rate:.3f} s at {self.sample_rate} Hz), "
                f"got {length}"
            )

    # ------------------------------------------------------------------ log-mel front-end
    def build_logmel_frontend(
        self,
        window_size: int,
        hop_size: int,
        mel_bins: int,
        fmin: float,
        fmax: float,
        *,
        spec_augment: bool = True,
    ) -> None:
        """Create ``spectrogram_extractor``, ``logmel_extractor``, ``spec_augmenter``, ``bn0``.

        Call it where the checkpoint's key order puts these modules.
        """
        self.window_size = int(window_size)
        self.hop_size = int(hop_size)
        self.mel_bins = int(mel_bins)
        self.spectrogram_extractor = Spectrogram(
            n_fft=window_size, hop_length=hop_size, win_length=window_size, window="hann",
            center=True, pad_mode="reflect", freeze_parameters=True,
        )
        self.logmel_extractor = LogmelFilterBank(
            sr=self.sample_rate, n_fft=window_size, n_mels=mel_bins, fmin=fmin, fmax=fmax,
            ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True,
        )
        self.spec_augmenter: SpecAugmentation | None = None
        if spec_augment:
            self.spec_augmenter = SpecAugmentation(
                time_drop_width=64, time_stripes_num=2, freq_drop_width=8, freq_stripes_num=2
            )
        self.bn0 = nn.BatchNorm2d(mel_bins)

    def raw_logmel(self, waveform: Tensor) -> Tensor:
        """Log-mel before bn0: (B, 1, frames, mel_bins), frames = L // hop + 1."""
        x = self.spectrogram_extractor(waveform)
        return self.logmel_extractor(x)

    def normalise_logmel(self, x: Tensor) -> Tensor:
        """bn0 per mel bin: (B, 1, T, mel) -> (B, mel, T, 1) -> bn0 -> back."""
        return self.bn0(x.transpose(1, 3)).transpose(1, 3)

    def augment(self, x: Tensor) -> Tensor:
        """SpecAugment in training only. An axis shorter than its stripe width is left alone
        (torchlibrosa cannot draw a stripe there and would raise)."""
        aug = self.spec_augmenter
        if not self.training or aug is None:
            return x
        if x.shape[2] > aug.time_dropper.drop_width:
            x = aug.time_dropper(x)
        if x.shape[3] > aug.freq_dropper.drop_width:
            x = aug.freq_dropper(x)
        return x

    def logmel_features(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> Tensor:
        """(B, L) waveform -> (B, 1, T, mel) after bn0, SpecAugment and mixup (training)."""
        x = self.normalise_logmel(self.raw_logmel(waveform))
        x = self.augment(x)
        if self.training and mixup_lambda is not None:
            x = do_mixup(x, mixup_lambda)
        return x


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> pooling (keys conv1, conv2, bn1, bn2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        init_weights(self)

    def forward(
        self, x: Tensor, pool_size: tuple[int, int] = (2, 2), pool_type: str = "avg"
    ) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return pool2d(x, pool_size, pool_type)


class ConvBlock5x5(nn.Module):
    """A single conv5x5 (pad 2) -> BN -> ReLU -> pooling (keys conv1, bn1)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        init_weights(self)

    def forward(
        self, x: Tensor, pool_size: tuple[int, int] = (2, 2), pool_type: str = "avg"
    ) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return pool2d(x, pool_size, pool_type)


def pool2d(x: Tensor, pool_size: tuple[int, int], pool_type: str = "avg") -> Tensor:
    """Non-overlapping pooling (kernel = stride, floor); (1, 1) is the identity."""
    if tuple(pool_size) == (1, 1):
        return x
    if pool_type == "avg":
        return F.avg_pool2d(x, kernel_size=pool_size)
    if pool_type == "max":
        return F.max_pool2d(x, kernel_size=pool_size)
    if pool_type == "avg+max":
        return F.avg_pool2d(x, kernel_size=pool_size) + F.max_pool2d(x, kernel_size=pool_size)
    raise ValueError(f"unknown pool_type {pool_type!r}")


def global_pool_1d(x: Tensor) -> Tensor:
    """(B, C, T) -> (B, C): max over time + mean over time."""
    return torch.amax(x, dim=2) + torch.mean(x, dim=2)


def global_pool_2d(x: Tensor) -> Tensor:
    """(B, C, T, F) -> (B, C): mean over frequency, then max + mean over time."""
    return global_pool_1d(torch.mean(x, dim=3))


def tagging_head(
    x: Tensor,
    fc1: nn.Linear,
    fc_audioset: nn.Linear,
    *,
    training: bool,
    dropout_in: float = 0.5,
    dropout_emb: float = 0.5,
) -> dict[str, Tensor]:
    """Pooled features (B, C) -> ``embedding`` and ``clipwise_output``.

    dropout(dropout_in) -> fc1 -> ReLU = h; ``clipwise_output = sigmoid(fc_audioset(h))`` and
    ``embedding = dropout(h, dropout_emb)`` (both dropouts only in training, 0 disables).
    """
    if dropout_in > 0:
        x = F.dropout(x, p=dropout_in, training=training)
    hidden = F.relu(fc1(x))
    embedding = F.dropout(hidden, p=dropout_emb, training=training) if dropout_emb > 0 else hidden
    clipwise = torch.sigmoid(fc_audioset(hidden))
    return {"clipwise_output": clipwise, "embedding": embedding}
