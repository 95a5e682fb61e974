"""The ONNX Runtime backend: one session over a bundle's chosen variant, runs batches.

Knows nothing of HTTP or batching. On CPU it runs fp32, or int8 when asked, with the
configured intra-op threads. On CUDA it prefers the fp16 variant and uses IO binding: each
batch is cast into a reused page-locked staging buffer (``ort_cuda``) bound as the input,
outputs are bound on the device and copied back. ``inflight`` batches may run at once (two
by default on CUDA, from the batcher's engine threads, each with its own staging buffer): a
session is shared by them (``Run`` is thread-safe; each run gets its own CUDA stream from
ORT), so the next batch's host->device copy overlaps the current batch's kernels. A batch is
padded with zero rows up to the next of a few sizes (``ort_cuda.batch_buckets``), and each
size has a session of its own, so that cuDNN plans each shape once, at warm-up, and not again
whenever the batch size changes (``ort_cuda`` says why). Optional, off until
measured faster (README "GPU engine"): CUDA graphs for the full batch shape, and the TensorRT
provider (fp16, engine cache), which falls back to plain CUDA with a warning when it fails.
A CUDA graph that fails to capture stops the load instead (the process's CUDA state is not to
be trusted after it).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.backends import BackendOptions, BatchInput, Device, Precision
from service.core.backends.ort_cuda import (
    GraphRunner,
    SessionsBySize,
    Slot,
    SlotPool,
    batch_buckets,
    padded_size,
)
from service.core.card import BundleError, ModelCard, OutputKind, as_output_kind, load_bundle

log = logging.getLogger("service.core.backends.ort")

CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
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


def resolve_inflight(requested: int, device: str) -> int:
    """Batches run at once: as asked, else 2 on CUDA (copy overlaps compute), 1 on CPU."""
    if requested > 0:
        return requested
    return 2 if device == "cuda" else 1


def cuda_options(options: BackendOptions) -> dict[str, str]:
    """The CUDA provider's options: cuDNN's conv algorithm search, and the NHWC layout."""
    cuda = {"cudnn_conv_algo_search": options.cudnn_search.upper()}
    if options.prefer_nhwc:
        cuda["prefer_nhwc"] = "1"
    return cuda


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
        self.bundle_dir, self.options = Path(bundle_dir), options
        self.card: ModelCard = load_bundle(bundle_dir, verify=options.verify)
        self.provider = choose_provider(options.device)
        self.tensorrt = self._want_tensorrt(options)
        self.cuda_graph = False
        self.session = self._open_first()
        if self.provider == CUDA and CUDA not in self.session.get_providers()[:2]:
            # ORT falls back to the CPU when the CUDA libraries fail to load, silently.
            if options.device == "cuda":
                raise BundleError(
                    "PANNS_DEVICE=cuda but ONNX Runtime's CUDA provider failed to load "
                    "(CUDA or cuDNN libraries missing?): see the log above"
                )
            log.warning("the CUDA provider failed to load: serving %s on the CPU", self.card.name)
            self.provider, self.tensorrt = CPU, False
            self.session = self._open()
        self.device = "cuda" if self.provider == CUDA else "cpu"
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        graph_outputs = {o.name for o in self.session.get_outputs()}
        self.kinds: dict[str, OutputKind] = {
            o.name: kind
            for o in self.card.outputs
            if o.name in graph_outputs and (kind := as_output_kind(o.kind)) is not None
        }
        if "clipwise" not in self.kinds.values():
            raise BundleError(f"{bundle_dir}: the graph has no clipwise output")
        self.inflight = resolve_inflight(options.inflight, self.device)
        self._slots = (
            SlotPool([Slot() for _ in range(self.inflight)]) if self.device == "cuda" else None
        )
        # CUDA: each run copies its batch into its slot's staging buffer; on CPU the batcher's
        # stacked batch is what ORT reads (stacked in the batcher's thread, ahead of the run)
        self.stages = self._slots is not None
        self.buckets, self.sessions = self._sizes()
        if options.cuda_graph:
            self._enable_cuda_graphs()
        log.info(
            "loaded %s (%s, %s) on %s; %d batch(es) in flight%s",
            self.card.name,
            self.card.arch,
            self.precision,
            self.session.get_providers()[0],
            self.inflight,
            self._cuda_summary(),
        )

    def _cuda_summary(self) -> str:
        """What the load log says of the GPU engine's options (nothing on CPU)."""
        if self.device != "cuda":
            return ""
        opts = self.options
        parts = [f"batches padded to {self.buckets}" if self.buckets else "batches unpadded"]
        parts.append(f"cuDNN search {opts.cudnn_search}" + (", NHWC" if opts.prefer_nhwc else ""))
        if self.tensorrt:
            parts.append("TensorRT fp16")
        if self.cuda_graph:
            parts.append(f"CUDA graph for batch {opts.max_batch}")
        return "; " + ", ".join(parts)

    def _sizes(self) -> tuple[list[int], SessionsBySize | None]:
        """CUDA: the batch sizes cuDNN sees (every batch padded up to one), each with a session
        of its own (TensorRT keeps one: its profile spans them). Empty, None: as they come."""
        options = self.options
        if not (self.stages and options.pad_batches and options.max_batch > 0):
            return [], None
        buckets = batch_buckets(options.max_batch)
        if self.tensorrt:
            return buckets, None
        sessions = SessionsBySize(self._open)
        sessions.add(buckets[-1], self.session)
        return buckets, sessions

    @property
    def pinned(self) -> bool:
        """Whether the staging buffers are page-locked (CUDA only)."""
        return self._slots is not None and self._slots.pinned

    def _want_tensorrt(self, options: BackendOptions) -> bool:
        if not options.tensorrt:
            return False
        if self.provider != CUDA:
            log.warning("PANNS_ORT_TENSORRT ignored: not running on CUDA")
            return False
        if TRT not in ort.get_available_providers():
            log.warning(
                "PANNS_ORT_TENSORRT: ONNX Runtime offers no %s (%s): using plain CUDA",
                TRT,
                ort.get_available_providers(),
            )
            return False
        return True

    def _open_first(self) -> ort.InferenceSession:
        """The session; with TensorRT, plain CUDA when TensorRT fails to initialise."""
        if not self.tensorrt:
            return self._open()
        try:
            session = self._open()
        except Exception as exc:  # e.g. libnvinfer missing: ORT raises for a bad provider
            log.warning("TensorRT failed to initialise (%s): using plain CUDA", exc)
            self.tensorrt = False
            return self._open()
        if session.get_providers()[0] != TRT:  # ORT's own fallback, silent but for its log
            log.warning("TensorRT did not load (%s): using plain CUDA", session.get_providers())
            self.tensorrt = False
        return session

    def _open(self, cuda_graph: bool = False) -> ort.InferenceSession:
        """A session over the variant that suits ``self.provider`` (fp16 on CUDA by default)."""
        self.precision = resolve_variant(self.card, self.provider, self.options.precision)
        path = self.bundle_dir / self.card.files[self.precision].path  # type: ignore[index]
        return ort.InferenceSession(
            str(path), self._session_options(), providers=self._providers(cuda_graph)
        )

    def _session_options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.inter_op_num_threads = 1
        if self.options.threads > 0:
            opts.intra_op_num_threads = self.options.threads
        # The batcher idles between batches: spinning threads would steal the event loop's CPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    def _providers(self, cuda_graph: bool = False) -> list[str | tuple[str, dict[str, str]]]:
        if self.provider != CUDA:
            return [CPU]
        cuda = cuda_options(self.options)
        if cuda_graph:
            return [(CUDA, {**cuda, "enable_cuda_graph": "1"}), CPU]
        if self.tensorrt:
            return [(TRT, self._trt_options()), (CUDA, cuda), CPU]
        return [(CUDA, cuda), CPU]

    def _trt_options(self) -> dict[str, str]:
        """fp16 engines cached on disk; one optimisation profile from a 1-window batch of the
        shortest input to a full batch of the longest window, tuned for full 10 s batches."""
        card, opts = self.card, self.options
        name, batch = card.inputs[0].name, max(1, opts.max_batch)
        longest = max(card.clip_samples, round(opts.max_window_s * card.sample_rate))
        cache = opts.trt_cache_dir or str(Path(tempfile.gettempdir()) / "panns-serve-trt")
        Path(cache).mkdir(parents=True, exist_ok=True)
        return {
            "trt_fp16_enable": "1",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": cache,
            "trt_profile_min_shapes": f"{name}:1x{card.min_samples}",
            "trt_profile_opt_shapes": f"{name}:{batch}x{card.clip_samples}",
            "trt_profile_max_shapes": f"{name}:{batch}x{longest}",
        }

    def _enable_cuda_graphs(self) -> None:
        """One CUDA-graph session per slot for full (max_batch, clip) batches; a warning where
        they cannot apply, a ``BundleError`` where capturing fails."""
        why = ""
        if self._slots is None:
            why = "not running on CUDA"
        elif self.tensorrt:
            why = "TensorRT is in use (its own graphs are not enabled here)"
        elif self.options.max_batch < 1:
            why = "the full batch size is unknown"
        if why:
            log.warning("PANNS_ORT_CUDA_GRAPH ignored: %s", why)
            return
        assert self._slots is not None
        shape = (self.options.max_batch, self.card.clip_samples)
        try:
            probe = self._run_bound(np.zeros(shape, self.input_dtype), list(self.kinds))
            outputs = {n: (v.shape, v.dtype) for n, v in zip(self.kinds, probe, strict=True)}
            for slot in self._slots.slots:
                session = self._open(cuda_graph=True)
                slot.graph = GraphRunner(session, self.input_name, shape, self.input_dtype, outputs)
        except Exception as exc:  # e.g. a node that copies from the host: no capture
            # Not a fallback: on an H200 (ORT 1.31.1) the failed capture left the process's CUDA
            # state broken, and the next session failed to load (cudaMemcpy: invalid argument).
            raise BundleError(
                f"PANNS_ORT_CUDA_GRAPH: capturing a CUDA graph failed ({exc}); the CUDA "
                "context cannot be trusted after that: unset PANNS_ORT_CUDA_GRAPH"
            ) from exc
        self.cuda_graph = True

    def run(self, batch: BatchInput) -> dict[str, np.ndarray]:
        """Run a (B, L) batch (or its B windows); float32 outputs keyed by kind (clipwise, ...).

        Thread-safe: up to ``inflight`` calls proceed at once (more wait for a slot)."""
        names = list(self.kinds)
        if self._slots is None:
            feed = np.ascontiguousarray(batch, dtype=self.input_dtype)
            values = self.session.run(names, {self.input_name: feed})
        else:
            values = self._run_cuda(batch, names)
        return {
            self.kinds[n]: np.asarray(v, dtype=np.float32)
            for n, v in zip(names, values, strict=True)
        }

    def _run_cuda(self, batch: BatchInput, names: list[str]) -> list[np.ndarray]:
        """The batch staged (padded up to its bucket), run, and the padding rows dropped."""
        assert self._slots is not None
        rows = len(batch)
        slot = self._slots.take()
        try:
            staged = slot.staging.fill(batch, self.input_dtype, padded_size(rows, self.buckets))
            if slot.graph is not None and staged.shape == slot.graph.shape:
                values = slot.graph.run(staged)
            else:
                values = self._run_bound(staged, names)
        finally:
            self._slots.give(slot)
        return [value[:rows] for value in values]

    def _run_bound(self, staged: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """Input bound in (pinned) host memory: ORT copies it on the run's own stream. On the
        session for this batch size, where each size has its own."""
        session = self.session if self.sessions is None else self.sessions.get(len(staged))
        binding = session.io_binding()
        binding.bind_cpu_input(self.input_name, staged)
        for name in names:
            binding.bind_output(name, "cuda")
        session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    def warm_up(self, batch_sizes: list[int], length: int) -> None:
        """Run each batch shape once so the first real request pays no set-up cost (each
        bucket once, where batches are padded)."""
        for size in sorted({padded_size(size, self.buckets) for size in batch_sizes}):
            self.run(np.zeros((size, length), np.float32))
