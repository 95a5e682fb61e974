"""The log-mel CNN family: Cnn6, Cnn10, Cnn14 and the Cnn14 variants.

All of them: log-mel front-end -> bn0 -> a stack of conv blocks (avg pooling, dropout 0.2 after
each block in training) -> mean over frequency -> max + mean over time -> fc1 -> ReLU (embedding)
-> fc_audioset -> sigmoid (clipwise_output).
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from training.models.common import (
    ConvBlock,
    ConvBlock5x5,
    PannsModel,
    do_mixup,
    global_pool_2d,
    init_weights,
    logmel_min_samples,
    tagging_head,
)

CNN14_CHANNELS = (64, 128, 256, 512, 1024, 2048)
CNN14_POOLS = ((2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (1, 1))


def build_conv_blocks(
    model: nn.Module, channels: tuple[int, ...], in_channels: int = 1, block: type = ConvBlock,
    first_index: int = 1,
) -> None:
    """Attach ``conv_block<first_index>..`` (``block(in, out)``) to ``model`` in key order."""
    for index, out_channels in enumerate(channels, start=first_index):
        model.add_module(f"conv_block{index}", block(in_channels, out_channels))
        in_channels = out_channels


def time_downsampling(pools: tuple[tuple[int, int], ...]) -> int:
    """Total time reduction of a stack of (time, freq) poolings."""
    factor = 1
    for time_pool, _ in pools:
        factor *= time_pool
    return factor


class LogmelCnn(PannsModel):
    """Front-end + conv stack shared by the CNN family and the decision-level models.

    Subclasses set the class attributes; the constructor builds the modules in the order of
    the official checkpoint keys (front-end, bn0, conv blocks) and leaves the head to them.
    """

    channels: tuple[int, ...] = CNN14_CHANNELS
    pools: tuple[tuple[int, int], ...] = CNN14_POOLS
    block: type = ConvBlock
    block_dropout: float = 0.2
    spec_augment: bool = True
    required_config: ClassVar[dict[str, float] | None] = None

    def __init__(
        self, sample_rate: int, window_size: int, hop_size: int, mel_bins: int,
        fmin: float, fmax: float, classes_num: int,
    ) -> None:
        super().__init__(sample_rate, classes_num)
        self._check_config(sample_rate=sample_rate, window_size=window_size, hop_size=hop_size,
                           mel_bins=mel_bins, fmin=fmin, fmax=fmax)
        freq_factor = 1
        for _, freq_pool in self.pools:
            freq_factor *= freq_pool
        if mel_bins < freq_factor:
            raise ValueError(f"{type(self).__name__} needs mel_bins >= {freq_factor}")
        self.build_logmel_frontend(window_size, hop_size, mel_bins, fmin, fmax,
                                   spec_augment=self.spec_augment)
        build_conv_blocks(self, self.channels, block=self.block)
        self.min_samples = logmel_min_samples(time_downsampling(self.pools), window_size,
                                              hop_size)

    def _check_config(self, **config: float) -> None:
        """Variants trained for one front-end config refuse another (as the reference does)."""
        for key, expected in (self.required_config or {}).items():
            if config[key] != expected:
                raise ValueError(
                    f"{type(self).__name__} requires {key}={expected}, got {config[key]}"
                )

    def conv_features(self, x: Tensor) -> Tensor:
        """(B, 1, T, mel) -> (B, C, T', F') through the conv blocks (dropout in training)."""
        for index, pool in enumerate(self.pools, start=1):
            x = getattr(self, f"conv_block{index}")(x, pool_size=pool, pool_type="avg")
            if self.block_dropout > 0:
                x = F.dropout(x, p=self.block_dropout, training=self.training)
        return x


class _TaggingCnn(LogmelCnn):
    """A LogmelCnn with the clip-level tagging head (fc1 -> fc_audioset)."""

    embedding_size: int = 2048
    mixup_waveform: bool = False

    def __init__(
        self, sample_rate: int, window_size: int, hop_size: int, mel_bins: int,
        fmin: float, fmax: float, classes_num: int,
    ) -> None:
        super().__init__(sample_rate, window_size, hop_size, mel_bins, fmin, fmax, classes_num)
        self.fc1 = nn.Linear(self.channels[-1], self.embedding_size, bias=True)
        self.fc_audioset = nn.Linear(self.embedding_size, classes_num, bias=True)
        init_weights(self)

    def forward(self, waveform: Tensor, mixup_lambda: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(waveform)
        if self.mixup_waveform and self.training and mixup_lambda is not None:
            waveform = do_mixup(waveform, mixup_lambda)
            mixup_lambda = None
        x = self.logmel_features(waveform, mixup_lambda)
        x = self.conv_features(x)
        return tagging_head(global_pool_2d(x), self.fc1, self.fc_audioset, training=self.training)


class Cnn6(_TaggingCnn):
    channels = (64, 128, 256, 512)
    pools = ((2, 2),) * 4
    block = ConvBlock5x5
    embedding_size = 512


class Cnn10(_TaggingCnn):
    channels = (64, 128, 256, 512)
    pools = ((2, 2),) * 4
    embedding_size = 512


class Cnn14(_TaggingCnn):
    pass


_16K: dict[str, float] = {"sample_rate": 16000, "window_size": 512, "hop_size": 160, "mel_bins": 64,
        "fmin": 50, "fmax": 8000}
_8K: dict[str, float] = {"sample_rate": 8000, "window_size": 256, "hop_size": 80, "mel_bins": 64,
       "fmin": 50, "fmax": 4000}


class Cnn14_16k(Cnn14):
    required_config: ClassVar[dict[str, float] | None] = _16K


class Cnn14_8k(Cnn14):
    required_config: ClassVar[dict[str, float] | None] = _8K


class Cnn14_emb512(Cnn14):
    embedding_size = 512


class Cnn14_emb128(Cnn14):
    embedding_size = 128


class Cnn14_emb32(Cnn14):
    embedding_size = 32


class Cnn14_no_specaug(Cnn14):
    """Cnn14 trained without SpecAugment (mixup and dropout kept)."""

    spec_augment = False


class Cnn14_no_dropout(Cnn14):
    """Cnn14 without the 0.2 dropout between conv blocks (the head's 0.5 dropout is kept)."""

    block_dropout = 0.0


class Cnn14_mixup_time_domain(Cnn14):
    """Cnn14 whose training mixup mixes the waveform pairs before the STFT."""

    mixup_waveform = True


class Cnn14_mel32(Cnn14):
    required_config: ClassVar[dict[str, float] | None] = {"mel_bins": 32}


class Cnn14_mel128(Cnn14):
    required_config: ClassVar[dict[str, float] | None] = {"mel_bins": 128}

