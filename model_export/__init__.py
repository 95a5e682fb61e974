"""Checkpoint -> ONNX model bundle (``model.onnx`` [+ fp16, int8] + ``model.json``), verified.

``export_bundle(model, out_dir, arch=...)`` is the library entry point; ``python -m
model_export`` the command; ``python -m model_export.ensure`` makes sure a bundle exists.
"""

from __future__ import annotations

from model_export.bundle import FILE_NAMES, export_bundle
from model_export.graph import ExportError
from model_export.verify import ParityError

__all__ = ["FILE_NAMES", "ExportError", "ParityError", "export_bundle"]
