"""The PANNs model zoo: every published architecture, keyed by its reference name.

``create_model(name)`` builds a model with the constructor arguments of its official
checkpoint, so ``model.load_state_dict(official["model"], strict=True)`` works.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.models.common import PannsModel

_SR32K: dict[str, Any] = {
    "sample_rate": 32000, "window_size": 1024, "hop_size": 320,
    "mel_bins": 64, "fmin": 50, "fmax": 14000, "classes_num": 527,
}
_SR16K = {**_SR32K, "sample_rate": 16000, "window_size": 512, "hop_size": 160, "fmax": 8000}
_SR8K = {**_SR32K, "sample_rate": 8000, "window_size": 256, "hop_size": 80, "fmax": 4000}

# name -> (module under training.models, class name, constructor arguments of the checkpoint)
MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "Cnn6": ("cnn", "Cnn6", _SR32K),
    "Cnn10": ("cnn", "Cnn10", _SR32K),
    "Cnn14": ("cnn", "Cnn14", _SR32K),
    "Cnn14_16k": ("cnn", "Cnn14_16k", _SR16K),
    "Cnn14_8k": ("cnn", "Cnn14_8k", _SR8K),
    "Cnn14_DecisionLevelMax": ("sed", "Cnn14_DecisionLevelMax", _SR32K),
    "Cnn14_DecisionLevelAtt": ("sed", "Cnn14_DecisionLevelAtt", _SR32K),
    "Cnn14_emb512": ("cnn", "Cnn14_emb512", _SR32K),
    "Cnn14_emb128": ("cnn", "Cnn14_emb128", _SR32K),
    "Cnn14_emb32": ("cnn", "Cnn14_emb32", _SR32K),
    "ResNet22": ("resnet", "ResNet22", _SR32K),
    "ResNet38": ("resnet", "ResNet38", _SR32K),
    "ResNet54": ("resnet", "ResNet54", _SR32K),
    "MobileNetV1": ("mobilenet", "MobileNetV1", _SR32K),
    "MobileNetV2": ("mobilenet", "MobileNetV2", _SR32K),
    "LeeNet11": ("wave1d", "LeeNet11", _SR32K),
    "LeeNet24": ("wave1d", "LeeNet24", _SR32K),
    "DaiNet19": ("wave1d", "DaiNet19", _SR32K),
    "Res1dNet31": ("wave1d", "Res1dNet31", _SR32K),
    "Res1dNet51": ("wave1d", "Res1dNet51", _SR32K),
    "Wavegram_Cnn14": ("wavegram", "Wavegram_Cnn14", _SR32K),
    "Wavegram_Logmel_Cnn14": ("wavegram", "Wavegram_Logmel_Cnn14", _SR32K),
    "Cnn14_no_specaug": ("cnn", "Cnn14_no_specaug", _SR32K),
    "Cnn14_no_dropout": ("cnn", "Cnn14_no_dropout", _SR32K),
    "Cnn14_mixup_time_domain": ("cnn", "Cnn14_mixup_time_domain", _SR32K),
    "Cnn14_mel32": ("cnn", "Cnn14_mel32", {**_SR32K, "mel_bins": 32}),
    "Cnn14_mel128": ("cnn", "Cnn14_mel128", {**_SR32K, "mel_bins": 128}),
    "Wavegram_Logmel128_Cnn14": (
        "wavegram", "Wavegram_Logmel128_Cnn14", {**_SR32K, "mel_bins": 128}
    ),
    "Cnn14_DecisionLevelAvg": ("sed", "Cnn14_DecisionLevelAvg", _SR32K),
}


def list_models() -> list[str]:
    """Every architecture name, in the manifest's order."""
    return list(MODELS)


def default_args(name: str) -> dict[str, Any]:
    """The constructor arguments of the official checkpoint of ``name``."""
    if name not in MODELS:
        known = ", ".join(MODELS)
        raise KeyError(f"unknown model {name!r}; known models: {known}")
    return dict(MODELS[name][2])


def model_class(name: str) -> type[PannsModel]:
    defaults = default_args(name)  # validates the name
    del defaults
    module_name, class_name, _ = MODELS[name]
    module = importlib.import_module(f"training.models.{module_name}")
    cls: type[PannsModel] = getattr(module, class_name)
    return cls


def create_model(name: str, **overrides: Any) -> PannsModel:
    """Build ``name`` with its checkpoint's constructor arguments, updated by ``overrides``."""
    kwargs = default_args(name)
    unknown = set(overrides) - set(kwargs)
    if unknown:
        raise TypeError(f"{name}: unknown constructor arguments {sorted(unknown)}")
    kwargs.update(overrides)
    return model_class(name)(**kwargs)
