"""The ONNX Runtime engine on a real bundle: provider/variant choice, batches, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.core.backends import BackendOptions
from service.core.backends.ort import CPU, OrtBackend
from service.core.card import BundleError
from tests.service.conftest import noise, run_bundle, settings_for


def test_engine_runs_batches_like_single_clips(tagger_bundle: Path) -> None:
    engine = OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1))
    assert (engine.provider, engine.precision) == (CPU, "fp32")
    clips = [noise(2.0, seed=s) for s in range(3)]
    out = engine.run(np.stack(clips))
    assert set(out) == {"clipwise", "embedding"} and out["clipwise"].shape == (3, 527)
    for row, clip in zip(out["clipwise"], clips, strict=True):
        np.testing.assert_allclose(row, run_bundle(tagger_bundle, clip)["clipwise"], atol=1e-5)


def test_missing_variant_or_device_is_a_clear_error(tagger_bundle: Path) -> None:
    with pytest.raises(BundleError, match="PANNS_PRECISION=int8 but bundle"):
        OrtBackend(tagger_bundle, BackendOptions(device="cpu", precision="int8"))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BundleError, match="PANNS_DEVICE=cuda"):
            OrtBackend(tagger_bundle, BackendOptions(device="cuda"))


def test_a_corrupted_bundle_is_refused(tagger_bundle: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tagger_bundle.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    graph = next(broken.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(BundleError, match="truncated"):
        OrtBackend(broken)


def test_main_refuses_a_missing_bundle_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {"PANNS_MODELS": str(tmp_path / "nothing"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "not a model bundle" in proc.stderr and "make bundle" in proc.stderr
    assert settings_for(tmp_path).model_dirs == [tmp_path]


def test_two_runs_at_once_on_cpu_give_the_sequential_results(tagger_bundle: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    assert OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1)).inflight == 1
    engine = OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1, inflight=2))
    assert engine.inflight == 2 and not engine.pinned
    batches = [np.stack([noise(2.0, seed=10 * b + s) for s in range(1 + b % 3)]) for b in range(6)]
    alone = [engine.run(x)["clipwise"] for x in batches]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda x: engine.run(x)["clipwise"], batches))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_gpu_options_on_cpu_warn_and_serve_plainly(
    tagger_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain = OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1))
    asked = BackendOptions(device="cpu", threads=1, tensorrt=True, cuda_graph=True, max_batch=4)
    with caplog.at_level("WARNING", logger="service.core.backends.ort"):
        engine = OrtBackend(tagger_bundle, asked)
    assert "PANNS_ORT_TENSORRT ignored" in caplog.text
    assert "PANNS_ORT_CUDA_GRAPH ignored" in caplog.text
    assert (engine.provider, engine.tensorrt, engine.cuda_graph) == (CPU, False, False)
    assert engine.session.get_providers() == [CPU]
    x = np.stack([noise(2.0, seed=s) for s in range(4)])
    np.testing.assert_array_equal(engine.run(x)["clipwise"], plain.run(x)["clipwise"])


def test_tensorrt_missing_under_cuda_falls_back_to_plain_cuda(
    tagger_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs ONNX Runtime's CUDA provider (the GPU check covers it)")
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is offered here: nothing to fall back from")
    with caplog.at_level("WARNING", logger="service.core.backends.ort"):
        engine = OrtBackend(tagger_bundle, BackendOptions(device="cuda", tensorrt=True))
    assert "offers no TensorrtExecutionProvider" in caplog.text
    assert engine.session.get_providers()[0] == "CUDAExecutionProvider" and not engine.tensorrt


def test_cudnn_search_reaches_the_cuda_sessions(
    tagger_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs ONNX Runtime's CUDA provider (the GPU check covers it)")
    options = BackendOptions(device="cuda", cudnn_search="heuristic", max_batch=4)
    with caplog.at_level("INFO", logger="service.core.backends.ort"):
        engine = OrtBackend(tagger_bundle, options)
    assert "batches padded to [1, 2, 4], cuDNN search heuristic" in caplog.text
    engine.warm_up([1, 4], engine.card.clip_samples)
    assert engine.sessions is not None
    for session in [engine.session, engine.sessions.get(1), engine.sessions.get(4)]:
        cuda = session.get_provider_options()["CUDAExecutionProvider"]
        assert cuda["cudnn_conv_algo_search"] == "HEURISTIC"


def test_staging_casts_in_place_and_reuses_its_buffer() -> None:
    from service.core.backends.ort_cuda import Staging

    staging = Staging()  # pinned only where a CUDA runtime is loaded
    big = np.random.default_rng(0).standard_normal((4, 100)).astype(np.float32)
    first = staging.fill(big, np.float16)
    assert first.dtype == np.float16 and first.shape == (4, 100)
    np.testing.assert_array_equal(first, big.astype(np.float16))
    small = staging.fill(big[:2, :50], np.float16)  # fits: the same memory, no new buffer
    assert np.shares_memory(first, small)
    np.testing.assert_array_equal(small, big[:2, :50].astype(np.float16))
    assert np.array_equal(staging.fill(big, np.float32), big)
    staging.close()


def test_staging_fills_from_windows_as_from_their_stack() -> None:
    """An engine that stages takes a batch's windows unstacked (the batcher's ``stack=False``):
    each lands in its row, in one pass, as the stacked batch would."""
    from service.core.backends.ort_cuda import Staging

    wave = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    windows = [wave[0:300], wave[500:800], wave[700:1000]]  # views, overlapping, as cut
    staging = Staging()
    for dtype in (np.float32, np.float16):
        staged = staging.fill(windows, dtype)
        assert staged.dtype == dtype and staged.shape == (3, 300)
        np.testing.assert_array_equal(staged, np.stack(windows).astype(dtype))
    with pytest.raises(ValueError, match="of one length"):
        staging.fill([wave[:300], wave[:299]], np.float32)  # no silent broadcast or cut
    staging.close()


def test_batch_buckets_are_powers_of_two_and_the_full_batch() -> None:
    from service.core.backends.ort_cuda import batch_buckets, padded_size

    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert batch_buckets(1) == [1]
    buckets = batch_buckets(48)
    assert [padded_size(n, buckets) for n in (1, 3, 17, 32, 33, 48)] == [1, 4, 32, 32, 48, 48]
    assert padded_size(50, buckets) == 50  # beyond the full batch: as it is
    assert padded_size(5, []) == 5  # no buckets: no padding


def test_staging_pads_with_zero_rows_over_what_was_there() -> None:
    from service.core.backends.ort_cuda import Staging

    staging = Staging()
    full = np.ones((4, 10), np.float32)
    staging.fill(full, np.float16)  # the buffer now holds ones in every row
    windows = [np.full(10, 2.0, np.float32), np.full(10, 3.0, np.float32)]
    staged = staging.fill(windows, np.float16, rows=4)
    assert staged.shape == (4, 10)
    np.testing.assert_array_equal(staged[:2], np.stack(windows).astype(np.float16))
    assert not staged[2:].any()  # zeros, not the last batch's rows
    assert staging.fill(windows, np.float16, rows=1).shape == (2, 10)  # never fewer rows
    one = [np.full(10, 5.0, np.float32)]
    assert np.array_equal(staging.fill(one, np.float16, rows=4)[:, 0], [5, 0, 0, 0])
    staging.fill(np.ones((3, 10), np.float32), np.float16)  # dirties three rows again
    staged = staging.fill(one, np.float16, rows=2)
    assert np.array_equal(staged[:, 0], [5, 0]) and staged.shape == (2, 10)
    assert not staging.fill(one, np.float16, rows=4)[1:].any()  # row 2 was left dirty: zeroed
    wide = staging.fill([np.full(15, 7.0, np.float32)], np.float32, rows=2)  # another length
    assert np.array_equal(wide[:, 0], [7, 0]) and not wide[1].any()
    staging.close()


def test_staging_padding_matches_a_fresh_zero_pad_whatever_came_before() -> None:
    """Against the obvious version (stack, then zero rows): batches of random sizes, lengths
    and paddings through one buffer, as an engine slot sees them."""
    from service.core.backends.ort_cuda import Staging

    rng = np.random.default_rng(5)
    staging = Staging()
    for _ in range(200):
        length, count = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        windows = [rng.standard_normal(length).astype(np.float32) for _ in range(count)]
        rows = count + int(rng.integers(0, 9))
        expected = np.zeros((rows, length), np.float16)
        expected[:count] = np.stack(windows)
        np.testing.assert_array_equal(staging.fill(windows, np.float16, rows=rows), expected)
    staging.close()


def test_sessions_by_size_open_each_size_once_across_threads(tagger_bundle: Path) -> None:
    """Real sessions (CPU here): each batch size gets one session of its own, opened once even
    when two engine threads ask for it at the same moment; the one passed in is reused."""
    from concurrent.futures import ThreadPoolExecutor

    from service.core.backends.ort_cuda import SessionsBySize

    engine = OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1))
    opened = []

    def open_session() -> object:
        opened.append(engine._open())
        return opened[-1]

    sessions = SessionsBySize(open_session)  # type: ignore[arg-type]
    sessions.add(8, engine.session)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(sessions.get, [1, 2, 1, 2, 8, 1, 2, 8]))
    assert got[0] is got[2] is got[5] and got[1] is got[3] is got[6]
    assert got[4] is got[7] is engine.session and got[0] is not got[1]
    assert len(opened) == 2 and len(sessions) == 3
    clip = noise(2.0, seed=3)[None, :]
    np.testing.assert_array_equal(  # the same graph: the same numbers
        got[0].run(None, {engine.input_name: clip})[0],
        engine.session.run(None, {engine.input_name: clip})[0],
    )


def test_a_cpu_backend_neither_pads_nor_splits_sessions(tagger_bundle: Path) -> None:
    engine = OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1, max_batch=8))
    assert engine.buckets == [] and engine.sessions is None  # padding is for cuDNN only


def test_a_backend_stages_only_where_it_copies_batches_itself(tagger_bundle: Path) -> None:
    engine = OrtBackend(tagger_bundle, BackendOptions(device="cpu", threads=1))
    assert not engine.stages  # on CPU ORT reads the batcher's stacked batch: no second copy
    windows = [noise(2.0, seed=s) for s in range(3)]
    np.testing.assert_array_equal(  # a list of windows is still a batch it runs
        engine.run(windows)["clipwise"], engine.run(np.stack(windows))["clipwise"]
    )


def test_backend_options_follow_the_settings(tmp_path: Path) -> None:
    from service.core.backends.ort import cuda_options
    from service.core.models import backend_options
    from service.core.pipeline import MAX_WINDOW_S

    opts = backend_options(
        settings_for(
            tmp_path,
            inflight_batches=2,
            ort_cuda_graph=True,
            ort_tensorrt=True,
            ort_trt_cache_dir="/c",
            ort_pad_batches=False,
            ort_cudnn_search="heuristic",
            ort_prefer_nhwc=True,
            max_batch=32,
        )
    )
    assert cuda_options(opts) == {"cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1"}
    assert cuda_options(BackendOptions()) == {"cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert (opts.inflight, opts.cuda_graph, opts.tensorrt) == (2, True, True)
    assert not opts.pad_batches and BackendOptions().pad_batches
    assert (opts.trt_cache_dir, opts.max_batch) == ("/c", 32)
    assert BackendOptions().max_window_s == MAX_WINDOW_S  # TensorRT's profile covers every window
    with pytest.raises(ValueError, match="inflight_batches"):
        settings_for(tmp_path, inflight_batches=3)
    with pytest.raises(ValueError, match="ort_cudnn_search"):
        settings_for(tmp_path, ort_cudnn_search="fastest")
