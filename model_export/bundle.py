"""``export_bundle``: a PyTorch model -> a verified, deterministic, atomically written bundle."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from model_export import variants, verify
from model_export.atomic import replace_dir
from model_export.audio import generated_batch, recordings
from model_export.card import build_card, default_labels
from model_export.graph import INPUT_NAME, ExportError, GraphSpec, export_onnx
from service.core.card import (
    VARIANT_FILES,
    Label,
    ModelCard,
    Parity,
    Source,
    load_bundle,
    write_card,
)

log = logging.getLogger(__name__)

FILE_NAMES = VARIANT_FILES  # the bundle's file names are the card's contract
CLIP_SECONDS = 10
GENERATED_CALIBRATION_CLIPS = 8


class _Steps:
    """A tqdm bar over the export steps when ``progress`` is on, log lines otherwise."""

    def __init__(self, total: int, progress: bool) -> None:
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", leave=False)

    def start(self, text: str) -> None:
        log.info("%s", text)
        if self._bar is not None:
            self._bar.set_description(text)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _gpu_providers() -> list[str]:
    """CUDA when this ONNX Runtime build can use it (fp16 is meant for it), else CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _eval_audio(sample_rate: int, samples: int, calibration_dir: Path | None) -> verify.Batch:
    """Audio for int8 calibration and its accuracy report: real recordings or generated."""
    if calibration_dir is not None:
        clips, names = recordings(Path(calibration_dir), sample_rate, samples)
        return {
            f"{len(names)} recordings from {Path(calibration_dir).name}/ "
            f"({samples / sample_rate:g}s each)": clips
        }
    clips = generated_batch(sample_rate, GENERATED_CALIBRATION_CLIPS, samples, seed=100)
    return {f"{len(clips)}x{samples / sample_rate:g}s generated": clips}


def _fp32(
    model: nn.Module, work: Path, clip: int
) -> tuple[Parity, dict[str, list[int]], verify.Reference]:
    """Export and gate the float32 graph; return its parity, output shapes and reference."""
    path = work / FILE_NAMES["fp32"]
    export_onnx(model, path, example_samples=clip)
    info = GraphSpec.of(model)
    names = info.output_names
    ref = verify.torch_reference(
        model, verify.parity_inputs(info.sample_rate, clip, info.min_samples)
    )
    parity = verify.check_gated("fp32", verify.session(path), ref, names)
    first = next(iter(ref.outputs.values()))
    shapes = {name: list(first[name].shape) for name in names}
    return parity, shapes, ref


def _build(
    model: nn.Module,
    work: Path,
    *,
    fp16: bool,
    int8: bool,
    calibration_dir: Path | None,
    steps: _Steps,
) -> tuple[dict[str, Parity], dict[str, list[int]]]:
    """Write the graphs into ``work`` and verify each; return parity per variant."""
    info = GraphSpec.of(model)
    clip = CLIP_SECONDS * info.sample_rate
    names = info.output_names
    steps.start("export + verify fp32")
    parity: dict[str, Parity] = {}
    parity["fp32"], shapes, ref = _fp32(model, work, clip)
    steps.done()
    if fp16:
        steps.start("convert + verify fp16")
        variants.to_fp16(work / FILE_NAMES["fp32"], work / FILE_NAMES["fp16"])
        sess = verify.session(work / FILE_NAMES["fp16"], _gpu_providers())
        parity["fp16"] = verify.check_gated("fp16", sess, ref, names)
        steps.done()
    if int8:
        steps.start("calibrate + quantize int8")
        audio = _eval_audio(info.sample_rate, clip, calibration_dir)
        calibration = np.concatenate(list(audio.values()))
        variants.to_int8(
            work / FILE_NAMES["fp32"], work / FILE_NAMES["int8"], calibration, INPUT_NAME
        )
        ref8 = verify.torch_reference(model, audio)
        parity["int8"] = verify.measure_int8(verify.session(work / FILE_NAMES["int8"]), ref8, names)
        steps.done()
    return parity, shapes


def export_bundle(
    model: nn.Module,
    out_dir: Path | str,
    *,
    arch: str,
    name: str | None = None,
    labels: Sequence[Label] | None = None,
    source: Source | None = None,
    fp16: bool = False,
    int8: bool = False,
    calibration_dir: Path | str | None = None,
    progress: bool = False,
) -> ModelCard:
    """Export ``model`` to a bundle in ``out_dir``; verify it; write it atomically.

    The bundle is built in a temporary directory beside ``out_dir`` and renamed into place only
    once every graph passed verification and the card re-reads and verifies, so a crash or a
    failed check never leaves a half bundle; an existing bundle is replaced atomically.
    ``labels`` defaults to the AudioSet table for 527-class models. Raises ``ExportError``
    (``verify.ParityError`` for a parity failure).
    """
    out = Path(out_dir).resolve()
    model.eval()
    classes = GraphSpec.of(model).classes_num
    try:
        labels = list(labels) if labels is not None else default_labels(classes)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    if len(labels) != classes:
        raise ExportError(f"{len(labels)} labels for a model with {classes} classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    steps = _Steps(1 + fp16 + int8, progress)
    try:
        parity, shapes = _build(
            model,
            work,
            fp16=fp16,
            int8=int8,
            steps=steps,
            calibration_dir=Path(calibration_dir) if calibration_dir is not None else None,
        )
        files = {variant: FILE_NAMES[variant] for variant in parity}  # type: ignore[index]
        card = build_card(
            model,
            work,
            arch=arch,
            name=name or out.name,
            labels=labels,
            source=source or Source(),
            files=files,
            parity=parity,
            shapes=shapes,
        )
        write_card(work, card)
        os.chmod(work, 0o755)  # mkdtemp makes it private; the service may run as another user
        load_bundle(work)  # what the service will do: re-read the card, check every file
        replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        steps.close()
    log.info("bundle written: %s (%s)", out, ", ".join(card.files))
    return card
