"""Training for `finetune` (one fixed sparsity config) and `adapt` (a random valid config every step).

Resumable bit for bit: every `checkpoint_every` steps and at every epoch end the full state (model,
optimizer, scheduler, step counters, metrics history, every rank's RNGs) is written atomically to
`out/last.pt` in one file (state.py: the one before is kept as prev.pt); `resume=True` continues from it,
skipping already-seen batches by index (the data order is a pure function of seed and epoch). A
non-finite loss or weight stops the run with one line before anything is written over a good file.
Under torchrun the model is wrapped in DistributedDataParallel,
each rank reads its shard of every epoch's permutation and metrics are reduced across ranks.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

from .. import dist
from ..data.datasets import build_loader, epoch_batches, iterate
from ..errors import UserError, first_line
from ..evaluate import autocast, evaluate_all
from ..io import ProgressReport, atomic_write_json, make_console, same_file
from ..methods import Config, method_for_model
from ..tasks import backbone_of, build_task_model, get_task
from .run_config import RunConfig, to_dict
from .state import check_same_run, load_checkpoint, read_checkpoint, save_checkpoint, write_history

MODEL_FILE = "model.safetensors"


#: test-only: an environment variable that stops `Trainer.fit` after this many optimizer steps of one call,
#: with a checkpoint and no model file, as an interruption would (the tests of resume and of the pipeline's
#: stopped stages use it); never a setting (`max_steps` is the run's total optimizer steps)
STOP_AFTER_STEPS_ENV = "SPARSEVIT_TEST_STOP_AFTER_STEPS"


def stop_after_steps_for_tests() -> Optional[int]:
    value = os.environ.get(STOP_AFTER_STEPS_ENV)
    return int(value) if value else None


# --------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


class Trainer:
    """One training run. `mode` is 'finetune' (fixed config) or 'adapt' (random config per step)."""

    def __init__(self, cfg: RunConfig, mode: str = "finetune", progress: bool = True,
                 console: Optional[Console] = None):
        if mode not in ("finetune", "adapt"):
            raise ValueError(mode)
        self.cfg, self.mode = cfg, mode
        dist.init_distributed(cfg.device)
        self.device = torch.device(cfg.device if cfg.device != "cuda" else f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device 'cuda' requested but no CUDA GPU is available")
        self.out = Path(cfg.out)
        if cfg.checkpoint and same_file(cfg.checkpoint, self.out / MODEL_FILE):
            raise UserError(f"checkpoint '{cfg.checkpoint}' is the model file this run writes in --out '{self.out}'; "
                            f"it would be replaced: copy it elsewhere or choose another --out")
        self.console = console or make_console()
        self.progress_enabled = progress and dist.is_main()
        self._seed_everything(cfg.seed)
        from ..model_file import read_meta
        # a toolkit model file fixes the model; the run config may only restate what the file says
        is_file = cfg.checkpoint and not os.path.isdir(cfg.checkpoint)  # a folder: a Hugging Face checkpoint
        self.checkpoint_meta = read_meta(cfg.checkpoint) if is_file else None
        # any other checkpoint (timm, official Swin, Hugging Face, mmdetection) is read and recognised now,
        # before the data: its architecture is the model's unless model.name is given
        self.raw_checkpoint = None
        if cfg.checkpoint and self.checkpoint_meta is None:
            from ..checkpoints import read_checkpoint
            self.raw_checkpoint = read_checkpoint(cfg.checkpoint)
            self._info(self.raw_checkpoint.layout_line)
        if self.checkpoint_meta is not None and "task" not in cfg.data.model_fields_set:
            cfg.data.task = self.checkpoint_meta.task  # `adapt --checkpoint det.safetensors --data coco/`
        self.task = get_task(cfg.data.task)
        asked = cfg.model.args.get("img_size")
        if self.checkpoint_meta is not None:
            built = self.checkpoint_meta.image_size
            if asked is not None and int(asked) != built:
                raise UserError(f"model file '{cfg.checkpoint}' was built for {built} px images, the run config "
                                f"asks for {asked} px (model.args.img_size); leave it out to train at {built} px")
            img_size = built
        else:
            from ..model_file import DEFAULT_IMG_SIZE
            held = self.raw_checkpoint.architecture.img_size if self.raw_checkpoint is not None else None
            img_size = int(asked or (held if not self._model_named else None) or DEFAULT_IMG_SIZE)
        self.img_size = img_size
        data = dict(img_size=img_size, skip_bad_images=cfg.data.skip_bad_images)
        self.train_set = self.task.dataset(cfg.data.path, "train", train=True, **data)
        self.val_set = self.task.dataset(cfg.data.path, "val", train=False, **data)
        # image folders can drop unreadable files (data.skip_bad_images); COCO sets are validated whole
        skipped = getattr(self.train_set, "skipped", []) + getattr(self.val_set, "skipped", [])
        if skipped:
            self._info(f"skipped {len(skipped)} unreadable image(s) in '{cfg.data.path}', e.g. '{skipped[0]}'")
        self.num_classes = self.train_set.num_classes
        asked_classes = cfg.model.args.get("num_classes")
        if self.task.name == "classification" and asked_classes is not None and asked_classes != self.num_classes:
            # a head of another size would train on labels it cannot predict, and the model file would
            # contradict itself; the data says how many classes there are
            raise UserError(f"the run config says model.args.num_classes: {asked_classes}, but '{cfg.data.path}' has "
                            f"{self.num_classes} classes; leave num_classes out (the data sets it)")
        self.model, self.method = self._build_model()
        self.model.to(self.device)
        self.config: Config = self.method.validate(self.backbone, self._fixed_sparsity())
        self.space = self._load_space() if mode == "adapt" else None
        self.config_rng = random.Random(cfg.seed + 1)  # per-step config sampling (adapt)

        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = len(self._batches(0))
        if self.steps_per_epoch == 0:
            raise UserError(f"data set has fewer than batch_size={cfg.batch_size} training images per process")
        # `max_steps` (total optimizer steps, as in Hugging Face's Trainer) ends the run early, schedule included
        self.total_steps = min(self.steps_per_epoch * cfg.epochs, cfg.max_steps or self.steps_per_epoch * cfg.epochs)
        self.scheduler = self._build_scheduler()
        self.scaler = torch.amp.GradScaler("cuda") if (cfg.amp and self.device.type == "cuda") else None
        self.state = TrainState()
        self.train_model = self.model
        if dist.is_distributed():
            # dense heads read the stage maps (forward_intermediates), which never run the backbone's final
            # norm: DDP must not wait for gradients of parameters a step does not use
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.name != "classification")

    # ---- construction
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    @property
    def backbone(self) -> nn.Module:
        return backbone_of(self.model)

    def _build_model(self):
        from ..model_file import build_from_meta, read_weights
        from ..timm_models import classifier_names, create_timm_model, load_timm_checkpoint, state_dict_problem

        cfg = self.cfg
        args = dict(cfg.model.args)
        if cfg.data.task == "classification":
            args.setdefault("num_classes", self.num_classes)
        options = cfg.method_options.given()
        meta = self.checkpoint_meta
        if meta is not None:  # a toolkit model file (e.g. the output of an earlier adapt)
            self._check_model_matches_file(meta)
            self.task_options = dict(meta.task_options or {})
            model, method = build_from_meta(meta)
            if options:
                method.wrap(backbone_of(model), **options)
            try:  # read_weights: the digest and finiteness checked, one line naming what is wrong
                model.load_state_dict(read_weights(cfg.checkpoint, meta), strict=True)
            except RuntimeError as e:
                raise UserError(f"checkpoint '{cfg.checkpoint}' does not match its metadata: {state_dict_problem(e)}")
            self.model_name, self.model_args = meta.model, dict(meta.model_args)
            if cfg.reset_head or meta.num_classes != self.num_classes:  # the user's task has other classes
                self._info(self.task.reset_head(model, self.num_classes))
                if "num_classes" in self.model_args:  # a classifier's timm constructor builds its head
                    self.model_args = dict(self.model_args, num_classes=self.num_classes)
            return model, method
        # the timm checkpoint loads into the bare backbone, classifier included (a dense task's head then
        # drops the classifier, which it never runs); the task head is built fresh around it
        name, ckpt = cfg.model.name, self.raw_checkpoint
        if ckpt is not None:  # without model.name, the checkpoint's own architecture at the run's image size
            from ..checkpoints import model_for
            name, args = model_for(ckpt, name if self._model_named else None,
                                   args if self._model_named else {**args, "img_size": self.img_size})
        backbone = create_timm_model(name, **args)
        if ckpt is not None:
            note = load_timm_checkpoint(backbone, cfg.checkpoint, reset_head=cfg.reset_head, checkpoint=ckpt,
                                        asked=name if self._model_named else None)
            for line in (ckpt.dropped_line, note):
                if line:
                    self._info(line)
        method = method_for_model(backbone)
        backbone = method.wrap(backbone, **options)
        self.model_name, self.model_args = name, args
        self.task_options = cfg.task_options.given()
        head, had_classes = classifier_names(backbone)[0], backbone.num_classes
        try:
            model = build_task_model(backbone, cfg.data.task, self.num_classes, **self.task_options)
        except TypeError as e:  # a head's constructor refusing an option the user wrote under task_options
            if not self.task_options:
                raise
            raise UserError(f"task_options do not fit the {cfg.data.task} head: {first_line(e)}") from None
        if cfg.checkpoint and had_classes and not backbone_of(model).num_classes:
            self._info(f"{head}: not used by the {cfg.data.task} head, dropped (backbone weights loaded)")
        return model, method

    @property
    def _model_named(self) -> bool:
        """Whether the run config (or --model) names the model; else a checkpoint's architecture is built."""
        return "name" in self.cfg.model.model_fields_set

    def _check_model_matches_file(self, meta) -> None:
        """A run config that names another model, other constructor args or another task than the
        model file it starts from is refused (the file's model is what would train)."""
        cfg, src = self.cfg, f"model file '{self.cfg.checkpoint}'"
        if "name" in cfg.model.model_fields_set and cfg.model.name != meta.model:
            raise UserError(f"{src} holds {meta.model}, the run config names model.name {cfg.model.name}")
        for key, value in cfg.model.args.items():
            if key not in ("img_size", "num_classes") and key in meta.model_args and meta.model_args[key] != value:
                raise UserError(f"{src} was built with {key}={meta.model_args[key]!r}, the run config says "
                                f"model.args.{key}={value!r}")
        if meta.task != cfg.data.task:
            raise UserError(f"{src} holds a model for the task {meta.task}, the run config says data.task: "
                            f"{cfg.data.task}")
        given = cfg.task_options.given()
        stored = dict(meta.task_options or {})
        changed = next((k for k, v in given.items() if stored.get(k) != v), None)
        if changed is not None:
            raise UserError(f"{src} was built with task_options.{changed}={stored.get(changed)!r}, the run "
                            f"config says {given[changed]!r}; leave task_options out to keep the file's head")

    def _info(self, text: str) -> None:
        if dist.is_main():
            self.console.print(f"info: {text}", highlight=False, soft_wrap=True)

    def _fixed_sparsity(self):
        sp = self.cfg.sparsity
        if isinstance(sp, (int, float)):
            return self.method.uniform_config(self.backbone, float(sp))
        return sp

    def _load_space(self):
        from ..search.space import load_space
        return load_space(self.space_name, group_sizes=self.method.group_sizes(self.backbone),
                          for_method=self.method.name)

    @property
    def space_name(self) -> str:
        return self.cfg.adapt.space or self.method.default_space

    def _build_optimizer(self) -> torch.optim.Optimizer:
        """timm's optimizer with timm's weight-decay groups: no decay on biases, norms (1-d parameters)
        and the backbone's `no_weight_decay()` names (prefixed when a task head wraps the backbone)."""
        from timm.optim import create_optimizer_v2, param_groups_weight_decay

        o, backbone = self.cfg.optim, self.backbone
        prefix = next(f"{n}." for n, m in self.model.named_modules() if m is backbone).lstrip(".")
        skip = {prefix + n for n in getattr(backbone, "no_weight_decay", lambda: set())()}
        groups = param_groups_weight_decay(self.model, o.weight_decay, no_weight_decay_list=skip)
        # timm's "sgd" is Nesterov; "momentum" is the classical momentum SGD this option means
        return create_optimizer_v2(groups, opt={"sgd": "momentum"}.get(o.name, o.name), lr=o.lr,
                                   weight_decay=o.weight_decay, momentum=o.momentum)

    def _build_scheduler(self):
        """timm's schedule in optimizer steps (`step_update` after every step): linear warm-up from
        lr / warmup_steps, then cosine down to min_lr over the remaining steps, or constant."""
        from timm.scheduler import CosineLRScheduler, StepLRScheduler

        s, lr = self.cfg.schedule, self.cfg.optim.lr
        warmup = dict(warmup_t=s.warmup_steps, warmup_lr_init=lr / max(1, s.warmup_steps), warmup_prefix=True,
                      t_in_epochs=False)
        if s.name == "cosine":
            return CosineLRScheduler(self.optimizer, t_initial=max(1, self.total_steps - s.warmup_steps),
                                     lr_min=min(s.min_lr, lr), **warmup)
        return StepLRScheduler(self.optimizer, decay_t=self.total_steps + 1, decay_rate=1.0, **warmup)

    def _batches(self, epoch: int) -> List[List[int]]:
        return epoch_batches(len(self.train_set), self.cfg.batch_size, self.cfg.seed, epoch, shuffle=True,
                             drop_last=True, rank=dist.rank(), world=dist.world_size())

    def _loader(self, epoch: int, start: int):
        """This rank's batches of `epoch` from batch `start` on (the ones a resumed run has not seen),
        decoded by `data.num_workers` workers; augmentation seeded per sample from (seed, epoch, rank)."""
        sample_seed = (self.cfg.seed * 100_003 + epoch) * 1_009 + dist.rank()
        return build_loader(self.train_set, self._batches(epoch), num_workers=self.cfg.data.num_workers,
                            start=start, sample_seed=sample_seed, collate_fn=self.task.collate)

    # ---- checkpointing
    def _rng_state(self) -> Dict[str, Any]:
        """Every random generator this process draws from, as tensors and plain values (a checkpoint
        loads with weights_only=True, which allows nothing else: numpy's key array becomes a tensor)."""
        kind, key, pos, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "config": self.config_rng.getstate(),
                "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def _set_rng_state(self, s: Dict[str, Any]) -> None:
        version, internal, gauss = s["python"]
        random.setstate((version, tuple(internal), gauss))
        version, internal, gauss = s["config"]
        self.config_rng.setstate((version, tuple(internal), gauss))
        kind, key, pos, has_gauss, gauss = s["numpy"]
        np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(s["torch"])
        if s.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])

    def save_state(self) -> None:
        """The whole training state in one file, atomically: rank 0 writes it with every rank's RNG
        states gathered into it, so no kill can leave weights and RNGs of different steps."""
        if vars(self.state) == getattr(self, "_saved_state", None):
            return  # this very state is on disk already; writing it again would push out prev.pt's
        self._require_finite_weights()
        rngs = dist.all_gather_object(self._rng_state())
        dist.main_only(lambda: save_checkpoint(self.out, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "train_state": vars(self.state).copy(), "mode": self.mode, "config": to_dict(self.cfg),
            "rng": rngs, "history": self.history, "loss": self.last_loss}))
        self._saved_state = vars(self.state).copy()

    def load_state(self) -> bool:
        """Continue from out/last.pt (or prev.pt when last.pt is damaged); False when there is none."""
        found = dist.main_only(lambda: load_checkpoint(self.out, self._check_resumable, self._info))
        path = dist.broadcast_object(str(found[0]) if found else None)
        if path is None:
            return False
        state = found[1] if found else read_checkpoint(Path(path))
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler and state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f"checkpoint '{path}' does not fit this run: {first_line(e)}") from None
        self.state = TrainState(**state["train_state"])
        self._set_rng_state(state["rng"][dist.rank()])
        self.history, self.last_loss = list(state["history"]), state["loss"]
        self._saved_state = vars(self.state).copy()
        return True

    def _check_resumable(self, state: Dict[str, Any], path: Path) -> None:
        if state["mode"] != self.mode:
            raise UserError(f"'{path}' belongs to a {state['mode']} run, not {self.mode}; choose another --out")
        check_same_run(state["config"], to_dict(self.cfg), path)
        if len(state["rng"]) != dist.world_size():
            raise UserError(f"'{path}' was saved by {len(state['rng'])} process(es), this run has "
                            f"{dist.world_size()}; resume with the same number (torchrun --nproc_per_node)")

    def _require_finite_weights(self) -> None:
        """Stop before NaN/inf weights are evaluated or written over a good checkpoint or model file."""
        bad = next((n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise UserError(f"training diverged: weight {bad} is not finite after step {self.state.global_step} "
                            f"(last loss {self.last_loss:g}); nothing was saved over the last good files; lower "
                            f"optim.lr (now {self.cfg.optim.lr:g})")

    # ---- training
    def _step_configs(self) -> List[Config]:
        if self.mode == "finetune":
            return [self.config]
        sampled = self.space.decode(self.space.sample(self.config_rng))
        configs = [sampled]
        if self.cfg.adapt.sandwich:
            configs += [self.space.decode(self.space.extreme("dense")), self.space.decode(self.space.extreme("sparsest"))]
        return configs

    def _autocast(self):
        return autocast(self.device, self.cfg.amp)

    def train_step(self, x, y) -> float:
        """One optimizer step on a batch as the task collates it (tensors, or lists of images and target
        dicts for detection); returns the loss summed over the step's configs."""
        x, y = self.task.to_device(x, y, self.device)
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        configs = self._step_configs()
        total = 0.0
        for cfg in configs:
            self.method.apply(self.backbone, cfg)
            with self._autocast():
                loss = self.task.loss(self.train_model, x, y) / len(configs)
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.item()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step_update(num_updates=self.state.global_step + 1)
        self.method.apply(self.backbone, self.config)
        return total

    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train to `epochs` or `max_steps` total optimizer steps, whichever comes first; the caller holds the
        output folder (state.run_folder). Tests may interrupt it on purpose (`stop_after_steps_for_tests`)."""
        self.history: List[Dict[str, Any]] = []
        self.last_loss = float("nan")
        if resume:
            if not self.load_state():
                self._info(f"no checkpoint in {self.out}, starting fresh")
            # lines logged after the checkpoint was written are logged again when their epoch ends
            dist.main_only(lambda: write_history(self.out, self.history))
        cfg, st = self.cfg, self.state
        done_steps_here = 0
        stop_after = stop_after_steps_for_tests()
        with self._progress() as progress:
            steps = progress.add("steps", self.total_steps, completed=st.global_step)
            while st.epoch < cfg.epochs and st.global_step < self.total_steps:
                for x, y in iterate(self._loader(st.epoch, st.step_in_epoch)):
                    if stop_after is not None and done_steps_here >= stop_after:
                        self.save_state()
                        return {"interrupted": True, "global_step": st.global_step}
                    t0 = time.perf_counter()
                    loss = self._finite_loss(self.train_step(x, y))
                    self.last_loss = loss
                    st.step_in_epoch += 1
                    st.global_step += 1
                    done_steps_here += 1
                    ips = len(x) * dist.world_size() / (time.perf_counter() - t0)
                    progress.update(steps, completed=st.global_step,
                                    note=f"epoch {st.epoch + 1}/{cfg.epochs}, loss {loss:.3f}, {ips:.1f} img/s")
                    if cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0:
                        self.save_state()
                    if st.global_step >= self.total_steps:  # max_steps reached inside this epoch
                        break
                st.epoch += 1
                st.step_in_epoch = 0
                self._require_finite_weights()
                scores = self.evaluate_all(self.config, progress=progress)
                self._log({"epoch": st.epoch, "step": st.global_step, "loss": self.last_loss, **scores})
                shown = ", ".join(f"{name} {value:.2f}" for name, value in scores.items())
                progress.console.print(f"epoch {st.epoch}/{cfg.epochs}: {shown}")
                self.save_state()
        checksums = dist.replica_checksums(self.model)
        dist.main_only(lambda: atomic_write_json(self.out / "replicas.json",
                                                 {"world_size": dist.world_size(), "checksums": checksums}, None,
                                                 "replica checksums"))
        if len(set(checksums)) != 1:
            raise RuntimeError(f"DDP replicas diverged: parameter checksums {checksums}")
        return {"interrupted": False, "global_step": st.global_step}

    def _finite_loss(self, loss: float) -> float:
        """The step's loss averaged over ranks (every rank then stops together on a non-finite one)."""
        total = dist.all_reduce_tensor(torch.tensor([float(loss)], dtype=torch.float64, device=self.device))
        loss = total.item() / dist.world_size()
        if not math.isfinite(loss):
            raise UserError(f"training diverged: loss is {loss} at step {self.state.global_step + 1} (epoch "
                            f"{self.state.epoch + 1}); nothing was saved over the last good files; lower "
                            f"optim.lr (now {self.cfg.optim.lr:g})")
        return loss

    # ---- evaluation
    @property
    def metric_name(self) -> str:
        return self.task.metric_name

    def evaluate_all(self, config: Optional[Config] = None, max_samples: Optional[int] = None,
                     progress: Optional[ProgressReport] = None) -> Dict[str, float]:
        """Every number the task reports (top-1, mIoU, box AP and mask AP; %) on the validation split under
        `config`, combined over ranks (`progress`: its 'val images' counter moves)."""
        scores = evaluate_all(self.model, self.method, config, self.val_set, self.task, self.cfg.eval_batch_size,
                              self.device, max_samples, amp=self.cfg.amp, num_workers=self.cfg.data.num_workers,
                              progress=progress)
        self.method.apply(self.backbone, self.config)
        return scores

    def evaluate(self, config: Optional[Config] = None, max_samples: Optional[int] = None) -> float:
        """The task's metric (`metric_name`, %) of `evaluate_all`."""
        return self.evaluate_all(config, max_samples)[self.metric_name]

    # ---- outputs
    def save_model(self, extra: Optional[Dict[str, Any]] = None) -> Path:
        from ..model_file import save_model
        path = self.out / MODEL_FILE
        self._require_finite_weights()
        meta = {"method": self.method.name, "model": self.model_name, "model_args": self.model_args,
                "img_size": self.img_size, "task": self.cfg.data.task, "num_classes": self.num_classes,
                "task_options": self.task_options or None, "class_names": self._class_names(),
                "category_ids": getattr(self.train_set, "category_ids", None),
                "sparsity": self.config,
                "method_options": self.method.options(self.backbone), "trained_by": self.mode, **(extra or {})}
        dist.main_only(lambda: save_model(path, self.model, meta))
        return path

    def _class_names(self) -> Optional[List[str]]:
        """The data set's class names (detection: of labels 1..K), stored for pictures and reports."""
        names = getattr(self.train_set, "class_names", None) or getattr(self.train_set, "classes", None)
        return [str(n) for n in names] if names else None

    def _log(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        dist.main_only(lambda: write_history(self.out, self.history))

    def _progress(self) -> ProgressReport:
        """Steps with loss, speed and an ETA: a bar on a terminal, else a plain line at most every 30 s (a log
        file shows progress during a long epoch)."""
        return ProgressReport(self.mode, console=self.console, enabled=self.progress_enabled)


def report_table(title: str, rows: List[Dict[str, Any]], columns: Sequence[str]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in columns])
    return table
