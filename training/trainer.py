"""The training loop: :class:`Trainer`, one process's share of a run (model, optimizer,
sampler, mixup, periodic evaluation, checkpoints and exact resume), and the helpers that open
its data. ``python -m training.train`` (:mod:`training.train`, which also describes the run
directory and the checkpoint format) and ``python -m training.finetune`` run it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.checkpoints import read_checkpoint
from training.config import TrainConfig
from training.evaluate import align_dataset, autocast_for, collate_padded, evaluate_model
from training.metrics import Scores
from training.mixup import Mixup, mix
from training.models import create_model, default_args
from training.models.common import PannsModel
from training.rundir import RunDir
from training.runtime import (
    Dist,
    barrier,
    gather_objects,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from training.sampler import make_sampler
from training.schedule import lr_at, set_lr
from training.tracking import RunLog
from training.weights import freeze_base, load_pretrained, set_train_mode

log = logging.getLogger(__name__)

# Architectures with parameters their forward never uses (DDP must be told).
_UNUSED_PARAMETERS = {"Wavegram_Cnn14", "Cnn14_DecisionLevelAtt", "DaiNet19"}


def is_audioset(labels: Sequence[str]) -> bool:
    """Whether ``labels`` is the AudioSet table in order (as mids or display names)."""
    from training.audioset import audioset_labels

    table = audioset_labels()
    names = list(labels)
    return names in ([x.mid for x in table], [x.display_name for x in table])


def open_data(
    path: str, sample_rate: int, clip_seconds: float, labels: Sequence[str] | None = None
) -> Any:
    """A pack as it is; a label folder or CSV decoded at ``sample_rate`` into clips of
    ``clip_seconds`` (in the column order of ``labels`` when given)."""
    from training.data import open_dataset

    if path.lower().endswith((".h5", ".hdf5")):
        return open_dataset(path)
    return open_dataset(
        path, sample_rate=sample_rate, labels=labels, clip_samples=round(clip_seconds * sample_rate)
    )


def model_sample_rate(config: TrainConfig) -> int:
    return int({**default_args(config.arch), **config.model_args}["sample_rate"])


class Trainer:
    """One process's share of a training run (rank 0 also evaluates, logs and saves)."""

    def __init__(
        self,
        config: TrainConfig,
        info: Dist | None = None,
        *,
        train_set: Any = None,
        eval_set: Any = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        self.info = info or Dist()
        self.run = RunDir(config.out)
        self.device = resolve_device(config.device, self.info)
        seed_everything(config.seed + self.info.rank)
        rate, clip = model_sample_rate(config), config.clip_seconds
        self.train_set = train_set if train_set is not None else open_data(config.train, rate, clip)
        targets = np.asarray(self.train_set.targets)
        self.labels = list(labels or getattr(self.train_set, "labels", None) or [])
        self.config = self._resolve_classes(config, targets.shape[1])
        self.eval_set = eval_set
        if self.eval_set is None and config.eval:
            self.eval_set = open_data(config.eval, rate, clip, self.labels or None)
        if self.eval_set is not None and self.labels:
            self.eval_set = align_dataset(self.eval_set, self.labels)
        self.model = self._build_model()
        self.net = self._wrap(self.model)
        # what the optimizer updates and gradient clipping clips
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._optimizer()
        fp16 = self.amp and self.config.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        rows = self.config.batch_size * (2 if self.config.mixup_alpha > 0 else 1)
        self.sampler = make_sampler(
            self.config.sampler,
            targets,
            rows,
            seed=self.config.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        seed = [self.config.seed, self.info.rank]
        alpha = self.config.mixup_alpha
        self.mixup = Mixup(alpha, seed=[*seed, 2]) if alpha > 0 else None
        self.crop_rng = np.random.default_rng([*seed, 1])
        self.iteration = 0
        self.best_map = -math.inf
        self.runlog: RunLog  # opened by fit()

    # ------------------------------------------------------------------ set-up
    def _resolve_classes(self, config: TrainConfig, classes: int) -> TrainConfig:
        """Give the model as many outputs as the data has classes."""
        wanted = config.model_args.get("classes_num", default_args(config.arch)["classes_num"])
        if wanted == classes:
            return config
        if "classes_num" in config.model_args:
            raise ValueError(
                f"model_args classes_num={wanted} but the training data has {classes} classes"
            )
        log.info(
            "the data has %d classes: building %s with classes_num=%d",
            classes,
            config.arch,
            classes,
        )
        args = {**config.model_args, "classes_num": classes}
        return TrainConfig.from_dict({**config.to_dict(), "model_args": args})

    @property
    def amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    def _build_model(self) -> PannsModel:
        model = create_model(self.config.arch, **self.config.model_args)
        if not self.config.spec_augment and getattr(model, "spec_augmenter", None) is not None:
            model.spec_augmenter = None  # PannsModel.augment() skips a missing augmenter
        if self.config.pretrained:
            load_pretrained(
                model, self.config.pretrained, skip_head=self.config.pretrained_skip_head
            )
        if self.config.freeze_base:
            trainable = freeze_base(model)
            log.info("frozen base: training %s", ", ".join(trainable))
        data_rate = getattr(self.train_set, "sample_rate", None)
        if data_rate is not None and int(data_rate) != int(model.sample_rate):
            raise ValueError(
                f"the data is at {data_rate} Hz, {self.config.arch} expects {model.sample_rate} Hz"
            )
        crop = round(self.config.crop_seconds * model.sample_rate)
        if 0 < crop < model.min_samples:
            raise ValueError(
                f"crop_seconds={self.config.crop_seconds} is shorter than the "
                f"{model.min_samples} samples {self.config.arch} needs"
            )
        return model.to(self.device)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.info.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=self.config.arch in _UNUSED_PARAMETERS
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.Adam(
            self.trainable,
            lr=c.lr,
            betas=c.betas,
            eps=c.eps,
            weight_decay=c.weight_decay,
            amsgrad=c.amsgrad,
        )

    def _loader(self) -> DataLoader[Any]:
        workers = self.config.workers
        return DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_padded,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),
            prefetch_factor=4 if workers else None,
        )

    # ------------------------------------------------------------------ training
    def _crop(self, wave: torch.Tensor) -> torch.Tensor:
        samples = round(self.config.crop_seconds * self.model.sample_rate)
        if samples <= 0 or wave.shape[1] <= samples:
            return wave
        starts = self.crop_rng.integers(0, wave.shape[1] - samples + 1, size=wave.shape[0])
        return torch.stack([row[s : s + samples] for row, s in zip(wave, starts, strict=True)])

    def _step(
        self, wave: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """One optimisation step; the loss, the learning rate it used and (when clipping)
        the gradient norm, the tensors on the device."""
        lr = lr_at(self.iteration, self.config)
        set_lr(self.optimizer, lr)
        wave = self._crop(wave).to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        lam = self.mixup.lambdas(wave.shape[0]).to(self.device) if self.mixup else None
        with autocast_for(self.device, self.amp, self.config.amp_dtype):
            out = self.net(wave, lam) if lam is not None else self.net(wave)
        clipwise = out["clipwise_output"].float()
        if lam is not None:
            target = mix(target, lam)
        loss = F.binary_cross_entropy(clipwise, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        norm = None
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            norm = nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), lr, norm

    def fit(self) -> dict[str, Any]:
        """Train up to ``config.steps``, evaluating and saving every ``eval_every`` steps."""
        if self.info.is_main:
            self.run.root.mkdir(parents=True, exist_ok=True)
            self.config.save(self.run.config)
        if self.iteration >= self.config.steps:
            log.info(
                "already at step %d of %d: nothing to train", self.iteration, self.config.steps
            )
            return {"iteration": self.iteration}
        self.runlog = RunLog(
            self.run,
            self.labels,
            start_step=self.iteration,
            tensorboard=self.config.tensorboard and self.info.is_main,
        )
        with closing(self.runlog):
            return self._loop()

    def _loop(self) -> dict[str, Any]:
        steps = self.config.steps
        set_train_mode(self.net, self.config.freeze_base)
        bar = tqdm(
            total=steps,
            initial=self.iteration,
            desc="train",
            disable=not self.info.is_main,
            dynamic_ncols=True,
        )
        postfix: dict[str, str] = {}  # always loss=, then mAP= too once there is one
        loss_sum, loss_count, started = torch.zeros((), device=self.device), 0, time.time()
        last: dict[str, Any] = {"iteration": self.iteration}
        for wave, target in self._loader():
            loss, lr, norm = self._step(wave, target)
            loss_sum += loss
            loss_count += 1
            self.iteration += 1
            self.runlog.step(self.iteration, loss, lr, norm)
            bar.update(1)
            if self.iteration % 10 == 0:
                postfix["loss"] = f"{loss_sum.item() / loss_count:.4f}"
                bar.set_postfix(postfix, refresh=False)
            if self.iteration % self.config.eval_every == 0 or self.iteration >= steps:
                elapsed = time.time() - started
                last = self.checkpoint(
                    float(loss_sum.item()) / loss_count,
                    loss_count * self.config.batch_size / elapsed,
                    lr,
                )
                postfix["loss"] = f"{last['train_loss']:.4f}"
                if last.get("mAP") is not None:
                    postfix["mAP"] = f"{last['mAP']:.4f}"
                bar.set_postfix(postfix)
                loss_sum.zero_()
                loss_count, started = 0, time.time()
                set_train_mode(self.net, self.config.freeze_base)
            if self.iteration >= steps:
                break
        bar.close()
        return last

    # ------------------------------------------------------------------ evaluation and saving
    def evaluate(self) -> Scores | None:
        if self.eval_set is None:
            return None
        return evaluate_model(
            self.model,
            self.eval_set,
            batch_size=self.config.eval_batch_size,
            device=self.device,
            workers=min(self.config.workers, 4),
            amp=self.amp,
            amp_dtype=self.config.amp_dtype,
        )

    def _rank_state(self) -> dict[str, Any]:
        return {
            "rng": rng_state(),
            "mixup": self.mixup.state_dict() if self.mixup else None,
            "crop": self.crop_rng.bit_generator.state,
        }

    def state_dict(self, rank_states: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint: official keys plus everything an exact resume needs."""
        state: dict[str, Any] = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(batch=self.iteration),
            "config": self.config.to_dict(),
            "arch": self.config.arch,
            "model_args": dict(self.config.model_args),
            "rank_states": rank_states,
            "scaler": self.scaler.state_dict(),
            "best_mAP": self.best_map,
        }
        if self.labels and not is_audioset(self.labels):
            state["labels"] = list(self.labels)
        return state

    def checkpoint(self, train_loss: float, clips_per_second: float, lr: float) -> dict[str, Any]:
        """Evaluate (rank 0), append to the logs, save latest (and best)."""
        scores = self.evaluate() if self.info.is_main else None
        rank_states = gather_objects(self._rank_state(), self.info)
        record: dict[str, Any] = {
            "iteration": self.iteration,
            "train_loss": train_loss,
            "lr": lr,
            "clips_per_second": clips_per_second * self.info.world_size,
            **(scores.summary() if scores else {}),
            "time": time.time(),
        }
        if self.info.is_main:
            # A tie goes to the later checkpoint: as good on the held-out set, trained longer.
            # A small held-out set saturates early (mAP 1.0 at the first evaluation of a
            # fine-tuned head), and keeping the first would keep a barely trained model.
            improved = scores is not None and scores.mAP >= self.best_map
            if improved and scores is not None:
                self.best_map = scores.mAP
            self._save(self.state_dict(rank_states), improved)
            self.runlog.evaluation(record, scores)
            log.info("step %d: %s", self.iteration, record)
        barrier(self.info)
        return record

    def _save(self, state: dict[str, Any], best: bool) -> None:
        self.run.latest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.run.latest.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.run.latest)
        if best:
            torch.save(state, tmp)
            tmp.replace(self.run.best)

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from a checkpoint of this run (default: latest.pth): weights, optimizer,
        sampler position, loss scaler and every RNG."""
        state = read_checkpoint(path or self.run.latest)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_map = float(state["best_mAP"])
        ranks = state["rank_states"]
        if len(ranks) != self.info.world_size:
            raise ValueError(
                f"checkpoint written by {len(ranks)} ranks, resuming with {self.info.world_size}"
            )
        mine = ranks[self.info.rank]
        set_rng_state(mine["rng"])
        if self.mixup is not None and mine["mixup"] is not None:
            self.mixup.load_state_dict(mine["mixup"])
        self.crop_rng.bit_generator.state = mine["crop"]
        log.info("resumed at step %d from %s", self.iteration, path or self.run.latest)
