"""``python -m model_export.ensure``: make sure the bundle the service will load exists.

Used by ``make serve`` and the Docker model step. Environment:

* ``PANNS_MODEL``: official architecture to serve (default ``Cnn14``), or
* ``PANNS_CHECKPOINT``: a checkpoint file of our own (takes precedence);
* ``PANNS_MODEL_NAME`` (or ``--name``): the model's name in the bundle and the API (default:
  the bundle directory's name);
* ``PANNS_MODELS``: bundle directories, comma-separated; the first is the one ensured
  (default ``models/<name lowercased>``, the name being ``PANNS_MODEL_NAME``, the official
  architecture, or the checkpoint's file name: a training run's ``checkpoints/best.pth`` or
  ``latest.pth`` is named after its run directory, so two runs never share a bundle);
* ``PANNS_CHECKPOINT_DIR``: where official checkpoints live (default ``models/checkpoints``);
* ``PANNS_EXPORT_VARIANTS``: extra variants, e.g. ``fp16`` or ``fp16,int8`` (or ``--fp16``,
  ``--int8``).

Does nothing when a bundle is there, verifies (every file's size and SHA-256), has the
requested variants, was made by the current export recipe (or its checkpoint is not on disk to
redo it) and, when ``PANNS_MODEL`` or ``PANNS_CHECKPOINT`` is set, was made from that
checkpoint, same file name and SHA-256 (a verified bundle of your own in ``PANNS_MODELS`` is
served as it is, never replaced by the default model). Otherwise downloads (official) and
exports. Offline without the checkpoint it exits 1 naming the file, its size, SHA-256, URL and
where to put it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from model_export.card import EXPORT_RECIPE
from model_export.checkpoint import checkpoint_dir, describe, export_checkpoint
from model_export.graph import ExportError
from service.core.card import EXTRA_VARIANTS, BundleError, ModelCard, load_bundle
from service.settings import split_list

log = logging.getLogger("model_export.ensure")

DEFAULT_MODEL = "Cnn14"


@dataclass(frozen=True)
class Request:
    """What the environment asks for."""

    official: str | None  # an official architecture name, or
    checkpoint: Path | None  # a checkpoint file of our own
    bundle: Path
    variants: frozenset[str]
    explicit: bool = True  # PANNS_MODEL or PANNS_CHECKPOINT was set (not the default)
    name: str | None = None  # the model name asked for (None: the bundle directory's)

    @property
    def checkpoint_name(self) -> str:
        if self.checkpoint is not None:
            return self.checkpoint.name
        from training.checkpoints import get_official

        return get_official(str(self.official)).file_name

    def checkpoint_on_disk(self) -> bool:
        """The checkpoint can be exported without a download."""
        if self.checkpoint is not None:
            return self.checkpoint.is_file()
        return (checkpoint_dir() / self.checkpoint_name).is_file()

    def checkpoint_sha256(self) -> str | None:
        """The SHA-256 the bundle must have been made from (None: the file is not there yet).

        Official checkpoints are known by the registry; a file of one's own is hashed, so a
        retrained checkpoint saved under the same name is exported again.
        """
        if self.checkpoint is None:
            from training.checkpoints import get_official

            return get_official(str(self.official)).sha256
        if not self.checkpoint.is_file():
            return None
        from training.checkpoints import sha256_file

        return sha256_file(self.checkpoint, progress=False)


# File names our training gives every run's checkpoints: they say nothing about the model.
RUN_CHECKPOINT_STEMS = frozenset({"best", "latest"})
# The authors' file names: <architecture>_mAP=<score>.pth
OFFICIAL_FILE = re.compile(r"^(.+?)_mAP=[0-9.]+$")


def checkpoint_model_name(checkpoint: Path) -> str:
    """A checkpoint's file name without its extension, except that a training run's
    ``RUN/checkpoints/best.pth`` (or ``latest.pth``) is named after ``RUN``."""
    official = OFFICIAL_FILE.match(checkpoint.stem)
    if official:  # Cnn14_mAP=0.431.pth serves as "Cnn14", what users type in ?model=
        return official.group(1)
    if checkpoint.stem.lower() not in RUN_CHECKPOINT_STEMS:
        return checkpoint.stem
    folder = checkpoint.absolute().parent
    if folder.name == "checkpoints":
        folder = folder.parent
    return folder.name or checkpoint.stem


def request_from_env(env: dict[str, str], variants: set[str], name: str | None = None) -> Request:
    """Read the request from ``env`` (``os.environ`` in practice); ``name`` (``--name``)
    overrides ``PANNS_MODEL_NAME``."""
    checkpoint = env.get("PANNS_CHECKPOINT") or None
    official = None if checkpoint else (env.get("PANNS_MODEL") or DEFAULT_MODEL)
    chosen = (name or env.get("PANNS_MODEL_NAME") or "").strip() or None
    default = checkpoint_model_name(Path(checkpoint)) if checkpoint else str(official)
    name = chosen or default
    dirs = [Path(part) for part in split_list(env.get("PANNS_MODELS") or "")]
    bundle = dirs[0] if dirs else Path("models") / name.lower()
    extra = set(split_list(env.get("PANNS_EXPORT_VARIANTS") or ""))
    unknown = extra - set(EXTRA_VARIANTS)
    if unknown:
        known = ", ".join(EXTRA_VARIANTS)
        raise ValueError(f"PANNS_EXPORT_VARIANTS: unknown variants {sorted(unknown)} ({known})")
    return Request(
        official=official,
        checkpoint=Path(checkpoint) if checkpoint else None,
        bundle=bundle,
        variants=frozenset(variants | extra),
        explicit=bool(checkpoint or env.get("PANNS_MODEL")),
        name=chosen,
    )


def usable(request: Request) -> ModelCard | None:
    """The existing bundle's card when it verifies and matches the request, else None."""
    if not request.bundle.exists():
        return None
    try:
        card = load_bundle(request.bundle)
    except BundleError as exc:
        log.warning("existing bundle is unusable, exporting again: %s", exc)
        return None
    if card.source.checkpoint != request.checkpoint_name:
        if not request.explicit:  # the user's own bundle: serve it, do not replace it
            log.warning(
                "%s (from %s) is kept as it is; set PANNS_MODEL or PANNS_CHECKPOINT to replace it",
                request.bundle,
                card.source.checkpoint,
            )
            return card
        log.warning(
            "%s was made from %s, not %s: exporting again",
            request.bundle,
            card.source.checkpoint,
            request.checkpoint_name,
        )
        return None
    if card.source.sha256 != request.checkpoint_sha256():
        log.warning(
            "%s was made from another version of %s: exporting again",
            request.bundle,
            request.checkpoint_name,
        )
        return None
    if request.name is not None and card.name != request.name:
        log.warning(
            "%s is named %r, not %r: exporting again", request.bundle, card.name, request.name
        )
        return None
    missing = request.variants - set(card.files)
    if missing:
        log.warning("%s lacks %s: exporting again", request.bundle, ", ".join(sorted(missing)))
        return None
    return _current_recipe(request, card)


def _current_recipe(request: Request, card: ModelCard) -> ModelCard | None:
    """None (export again) for a bundle of an older export recipe whose checkpoint is here;
    without the checkpoint the older bundle is served as it is rather than nothing."""
    if card.export_recipe >= EXPORT_RECIPE:
        return card
    older = f"{request.bundle} was made by export recipe {card.export_recipe} (now {EXPORT_RECIPE})"
    if request.checkpoint_on_disk():
        log.warning("%s: exporting again", older)
        return None
    log.warning(
        "%s; serving it as it is: %s is not on disk to export again", older, request.checkpoint_name
    )
    return card


def ensure(request: Request, progress: bool = True) -> ModelCard:
    """Return the card of a verified bundle for ``request``, exporting one when needed."""
    card = usable(request)
    if card is not None:
        return card
    from training.checkpoints import download

    path, digest = request.checkpoint, None
    if path is None:
        path = download(str(request.official), checkpoint_dir(), progress=progress)
        digest = request.checkpoint_sha256()  # the registry's, which download() verified
    return export_checkpoint(
        path,
        request.bundle,
        name=request.name,
        fp16="fp16" in request.variants,
        int8="int8" in request.variants,
        progress=progress,
        sha256=digest,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model_export.ensure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fp16", action="store_true", help="the bundle must have fp16")
    parser.add_argument("--int8", action="store_true", help="the bundle must have int8")
    parser.add_argument(
        "--name",
        default=None,
        help="model name in the bundle and the API (default: "
        "$PANNS_MODEL_NAME, else the bundle directory's name)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--print-dir",
        action="store_true",
        help="only print the bundle directory the environment asks for",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from training.checkpoints import CheckpointError

    wanted: set[str] = {v for v in EXTRA_VARIANTS if getattr(args, v)}
    try:
        request = request_from_env(dict(os.environ), wanted, args.name)
        if args.print_dir:  # for `make serve`: the service must load the bundle made here
            print(request.bundle)
            return 0
        card = ensure(request, progress=not args.quiet)
    except (CheckpointError, ExportError, ValueError, FileNotFoundError) as exc:
        print(f"error: no model bundle for the service.\n{exc}", file=sys.stderr)
        return 1
    print(describe(card, request.bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
