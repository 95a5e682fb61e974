"""``service.core.models``: which batcher a model's windows go to."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.nearfree import build_nearfree_bundle
from benchmarks.stages import load_engine
from service.core.batcher import Batcher
from service.core.card import read_card
from service.core.errors import UnknownModel
from service.core.models import ModelRuntime, Models
from service.core.remote import EngineClient, RemoteQueue
from service.settings import Settings


def test_local_batcher_is_only_ever_this_processs_own(tmp_path: Path) -> None:
    """The engine process enqueues straight into its batchers; a front's model, batched in
    the engine process, is refused by name rather than reached through the wrong door."""
    bundle = build_nearfree_bundle(tmp_path / "nf", sample_rate=16000, clip_s=1.0)
    card = read_card(bundle)
    backend = load_engine(bundle, device="cpu", precision="fp32")
    batcher = Batcher(backend.run, max_batch=4, max_delay_s=0.01, max_queue=16, name=card.name)
    models = Models(Settings(models=str(bundle)), ready=True)
    models.models[card.name] = ModelRuntime(card, backend, batcher, default=True)
    assert models.local_batcher() is batcher and models.local_batcher(card.name) is batcher
    client = EngineClient(str(tmp_path / "no-engine.sock"), arena_bytes=0)
    models.models["far"] = ModelRuntime(card, backend, RemoteQueue(client, "far"))
    with pytest.raises(TypeError, match="'far' is batched in another process"):
        models.local_batcher("far")
    with pytest.raises(UnknownModel):
        models.local_batcher("nope")
