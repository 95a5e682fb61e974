"""A near-free model bundle: a real ONNX graph that costs almost nothing to run.

    python benchmarks/nearfree.py OUT_DIR [--sample-rate 32000] [--clip-s 10]

The graph takes the service's input (``waveform`` [batch, samples], float32) and gives the
outputs a tagger gives, so the service loads and serves it like any exported bundle::

    mean = ReduceMean(waveform, axis=1, keepdims)            # [B, 1]
    clipwise_output = Sigmoid(MatMul(mean, W) + b)           # [B, 527], W: [1, 527]
    embedding = MatMul(mean, E)                              # [B, 2048]
    framewise_output = Expand(clipwise_output[:, None], [B, samples // 320 + 1, 527])
                                                 # only with framewise=True (``--framewise``)

Benchmarks use it to measure what the service costs around the model (HTTP, multipart,
decoding, resampling, windowing, batching, response encoding) with the model's own cost
reduced to one pass over the samples. The card lists the 527 AudioSet labels, every file's
size and SHA-256, and the graph's agreement with a NumPy evaluation of the same formula, so
``PANNS_VERIFY_BUNDLES`` holds. ``fp16=True`` adds a half-precision variant (the mean stays
float32; the head runs in float16; inputs and outputs stay float32). ``framewise=True`` adds
a decision-level model's frame scores (100 frames per second at 32 kHz, the shape of
Cnn14_DecisionLevelMax's: 1001 x 527 per 10 s window, 2.1 MB), so the cost of carrying them
can be measured.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # first: benchmarks/service.py must not shadow the package

from service.core.card import (  # noqa: E402
    FileEntry,
    Label,
    ModelCard,
    Parity,
    TensorSpec,
    load_bundle,
    sha256_file,
    write_card,
)
from training.audioset import audioset_labels  # noqa: E402  (the CSV reader; no torch)

NAME = "nearfree"
CLASSES = 527
EMBEDDING = 2048
OPSET = 17
HOP = 320  # samples per frame of the framewise output (100 frames per second at 32 kHz)
FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}


def _weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed head weights: scores spread over (0, 1) and depend (slightly) on the audio."""
    weight = np.linspace(-2.0, 2.0, CLASSES, dtype=np.float32)[None, :]
    bias = np.linspace(-5.0, 1.0, CLASSES, dtype=np.float32)
    embed = np.linspace(-1.0, 1.0, EMBEDDING, dtype=np.float32)[None, :]
    return weight, bias, embed


def _frame_nodes() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``frames`` [B, samples // HOP + 1, 527]: every frame the clip's scores (``probs``)."""
    const = {"zero": [0], "one": [1], "hop": [HOP], "classes": [CLASSES]}
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in const.items()]
    nodes = [
        helper.make_node("Shape", ["waveform"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"]),
        helper.make_node("Gather", ["shape", "one"], ["samples"]),
        helper.make_node("Div", ["samples", "hop"], ["whole"]),
        helper.make_node("Add", ["whole", "one"], ["count"]),
        helper.make_node("Concat", ["batch", "count", "classes"], ["frame_shape"], axis=0),
        helper.make_node("Unsqueeze", ["probs", "one"], ["probs3"]),
        helper.make_node("Expand", ["probs3", "frame_shape"], ["frames"]),
    ]
    return nodes, inits


def _outputs(framewise: bool) -> list[onnx.ValueInfoProto]:
    outs = [
        helper.make_tensor_value_info("clipwise_output", TensorProto.FLOAT, ["batch", CLASSES]),
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING]),
    ]
    if framewise:
        outs.append(
            helper.make_tensor_value_info(
                "framewise_output", TensorProto.FLOAT, ["batch", "frames", CLASSES]
            )
        )
    return outs


def _graph(half: bool, framewise: bool = False) -> onnx.ModelProto:
    weight, bias, embed = _weights()
    dtype = np.float16 if half else np.float32
    inits = [
        numpy_helper.from_array(weight.astype(dtype), "head.weight"),
        numpy_helper.from_array(bias.astype(dtype), "head.bias"),
        numpy_helper.from_array(embed.astype(dtype), "embed.weight"),
    ]
    nodes = [helper.make_node("ReduceMean", ["waveform"], ["mean"], axes=[1], keepdims=1)]
    head_in = "mean"
    if half:
        nodes.append(helper.make_node("Cast", ["mean"], ["mean16"], to=TensorProto.FLOAT16))
        head_in = "mean16"
    nodes += [
        helper.make_node("MatMul", [head_in, "head.weight"], ["logits_w"]),
        helper.make_node("Add", ["logits_w", "head.bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
        helper.make_node("MatMul", [head_in, "embed.weight"], ["embed"]),
    ]
    outs = {"probs": "clipwise_output", "embed": "embedding"}
    if framewise:
        frame_nodes, frame_inits = _frame_nodes()
        nodes, inits = nodes + frame_nodes, inits + frame_inits
        outs["frames"] = "framewise_output"
    for inner, outer in outs.items():
        if half:
            nodes.append(helper.make_node("Cast", [inner], [outer], to=TensorProto.FLOAT))
        else:
            nodes.append(helper.make_node("Identity", [inner], [outer]))
    graph = helper.make_graph(
        nodes,
        "nearfree",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        _outputs(framewise),
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every ONNX Runtime the project supports
    model.producer_name = "panns-serve benchmarks.nearfree"
    onnx.checker.check_model(model, full_check=True)
    return model


def reference(batch: np.ndarray) -> dict[str, np.ndarray]:
    """What the graph computes, in NumPy (float64), for checking it."""
    weight, bias, embed = (w.astype(np.float64) for w in _weights())
    mean = batch.astype(np.float64).mean(axis=1, keepdims=True)
    probs = 1.0 / (1.0 + np.exp(-(mean @ weight + bias)))
    frames = batch.shape[1] // HOP + 1
    return {
        "clipwise_output": probs,
        "embedding": mean @ embed,
        "framewise_output": np.repeat(probs[:, None, :], frames, axis=1),
    }


def _parity(path: Path, sample_rate: int, samples: int) -> Parity:
    """Run the graph in ONNX Runtime on seeded noise; compare with ``reference``."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    batch = (0.3 * rng.standard_normal((2, samples)) + 0.05).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {"waveform": batch}), strict=True))
    want = reference(batch)
    diffs = {name: float(np.max(np.abs(got[name] - want[name]))) for name in names}
    return Parity(inputs=[f"2x{samples / sample_rate:g}s seeded noise"], max_abs_diff=diffs)


def _versions() -> dict[str, str]:
    out = {"onnx": onnx.__version__, "opset": str(OPSET)}
    try:
        out["onnxruntime"] = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        out["onnxruntime"] = metadata.version("onnxruntime-gpu")
    return out


def build_nearfree_bundle(
    out_dir: Path | str,
    sample_rate: int = 32000,
    clip_s: float = 10.0,
    *,
    fp16: bool = True,
    framewise: bool = False,
) -> Path:
    """Write the near-free bundle into ``out_dir`` (created; files replaced); return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = round(clip_s * sample_rate)
    variants = ["fp32", "fp16"] if fp16 else ["fp32"]
    files, parity = {}, {}
    for variant in variants:
        path = out / FILES[variant]
        onnx.save(_graph(half=variant == "fp16", framewise=framewise), str(path))
        files[variant] = FileEntry(
            path=path.name, bytes=path.stat().st_size, sha256=sha256_file(path)
        )
        parity[variant] = _parity(path, sample_rate, samples)
    labels = [
        Label(index=r.index, mid=r.mid, display_name=r.display_name) for r in audioset_labels()
    ]
    outputs = [
        TensorSpec(name="clipwise_output", shape=[-1, CLASSES], kind="clipwise"),
        TensorSpec(name="embedding", shape=[-1, EMBEDDING], kind="embedding"),
    ]
    if framewise:
        outputs.append(
            TensorSpec(name="framewise_output", shape=[-1, -1, CLASSES], kind="framewise")
        )
    card = ModelCard(
        name=NAME,
        arch="NearFree",
        sample_rate=sample_rate,
        clip_samples=samples,
        min_samples=1,
        frames_per_second=sample_rate / HOP if framewise else None,
        inputs=[TensorSpec(name="waveform", shape=[-1, -1], kind="waveform")],
        outputs=outputs,
        labels=labels,
        files=files,  # type: ignore[arg-type]
        parity=parity,  # type: ignore[arg-type]
        versions=_versions(),
    )
    write_card(out, card)
    load_bundle(out)  # what the service does at start: re-read the card, check every file
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--sample-rate", type=int, default=32000)
    parser.add_argument("--clip-s", type=float, default=10.0)
    parser.add_argument("--no-fp16", action="store_true", help="fp32 graph only")
    parser.add_argument(
        "--framewise", action="store_true", help="also frame scores, as a decision-level model"
    )
    args = parser.parse_args()
    out = build_nearfree_bundle(
        args.out_dir,
        args.sample_rate,
        args.clip_s,
        fp16=not args.no_fp16,
        framewise=args.framewise,
    )
    print(out)


if __name__ == "__main__":
    main()
