"""The ONNX Runtime backend: one session over a bundle's chosen variant, runs batches.

Knows nothing of HTTP or batching. On CUDA it prefers the fp16 variant, binds inputs and
outputs explicitly (IO binding) and warms up every batch shape it will see; on CPU it runs
fp32, or int8 when asked, with the configured intra-op threads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.backends import BackendOptions, Device, Precision
from service.core.card import BundleError, ModelCard, load_bundle

log = logging.getLogger("service.core.backends.ort")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_provider(device: Device) -> str:
    """The execution provider to use; asking for CUDA where it is missing is an error."""
    available = ort.get_available_providers()
    if device == "cpu":
        return CPU
    if CUDA in available:
        return CUDA
    if device == "cuda":
        raise BundleError(f"PANNS_DEVICE=cuda but ONNX Runtime offers only {available}")
    return CPU


def resolve_variant(card: ModelCard, provider: str, precision: Precision) -> str:
    if precision == "auto":
        return "fp16" if provider == CUDA and "fp16" in card.files else "fp32"
    if precision not in card.files:
        have = ", ".join(card.files)
        raise BundleError(f"PANNS_PRECISION={precision} but bundle {card.name!r} has only: {have}")
    return precision


class OrtBackend:
    """One ONNX Runtime session over a bundle's chosen variant (a ``Backend``)."""

    def __init__(self, bundle_dir: Path | str, options: BackendOptions | None = None) -> None:
        options = options or BackendOptions()
        self.card: ModelCard = load_bundle(bundle_dir, verify=options.verify)
        self.provider = choose_provider(options.device)
        self.session = self._open(Path(bundle_dir), options)
        if self.provider == CUDA and self.session.get_providers()[0] != CUDA:
            # ORT falls back to the CPU when the CUDA libraries fail to load, silently.
            if options.device == "cuda":
                raise BundleError(
                    "PANNS_DEVICE=cuda but ONNX Runtime's CUDA provider failed to load "
                    "(CUDA or cuDNN libraries missing?): see the log above"
                )
            log.warning("the CUDA provider failed to load: serving %s on the CPU", self.card.name)
            self.provider = CPU
            self.session = self._open(Path(bundle_dir), options)
        self.device = "cuda" if self.provider == CUDA else "cpu"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        graph_outputs = {o.name for o in self.session.get_outputs()}
        self.kinds = {o.name: o.kind for o in self.card.outputs if o.name in graph_outputs}
        if "clipwise" not in self.kinds.values():
            raise BundleError(f"{bundle_dir}: the graph has no clipwise output")
        log.info(
            "loaded %s (%s, %s) on %s",
            self.card.name,
            self.card.arch,
            self.precision,
            self.provider,
        )

    def _open(self, bundle_dir: Path, options: BackendOptions) -> ort.InferenceSession:
        """A session over the variant that suits ``self.provider`` (fp16 on CUDA by default)."""
        self.precision = resolve_variant(self.card, self.provider, options.precision)
        path = bundle_dir / self.card.files[self.precision].path  # type: ignore[index]
        return ort.InferenceSession(
            str(path), self._options(options.threads), providers=self._providers()
        )

    def _options(self, threads: int) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        if threads > 0:
            opts.intra_op_num_threads = threads
        # The batcher idles between batches: spinning threads would steal the event loop's CPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _providers(self) -> list[str | tuple[str, dict[str, str]]]:
        if self.provider == CUDA:
            return [(CUDA, {"cudnn_conv_algo_search": "EXHAUSTIVE"}), CPU]
        return [CPU]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a (B, L) batch; return float32 outputs keyed by kind (clipwise, ...)."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        names = list(self.kinds)
        if self.provider == CUDA:
            values = self._run_bound(batch, names)
        else:
            values = self.session.run(names, {self.input_name: batch})
        return {
            self.kinds[n]: np.asarray(v, dtype=np.float32)
            for n, v in zip(names, values, strict=True)
        }

    def _run_bound(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, batch)
        for name in names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def warm_up(self, batch_sizes: list[int], length: int) -> None:
        """Run each batch shape once so the first real request pays no set-up cost."""
        for size in batch_sizes:
            self.run(np.zeros((size, length), np.float32))
