"""The one training loop of the vision plugin's trainers, on accelerate: one process, several
(``torchrun`` / ``accelerate launch``) or several machines, with the same code.

A trainer (``Trainer`` subclass) says what it trains and the loss of one micro-step; the loop
owns everything else: the optimizer and learning-rate schedule, gradient accumulation, the
progress bar with the loss, ``logs.jsonl``, ``loss_curve.png``, atomic checkpoints of the
trained parameters with the optimizer and RNG state, ``--resume latest``, and the end of the run.

Every random choice is keyed by the *global* sample position, never by the process (``generator``,
``epoch_indices``): the data order of epoch e is a permutation seeded by (seed, e); the noise and
timestep of a sample come from a generator seeded by (seed, stream, micro-step, position). Each
process takes its slice of the global batch, so P processes average to one process's gradient on
the whole batch, and a resumed run continues exactly where its checkpoint left it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusion_kernel.errors import CheckpointError, ConfigError, FileAccessError
from diffusion_kernel.hub import atomic_write_text

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"
LOG_FILE = "logs.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(kw_only=True)
class LoopConfig:
    """The options every trainer shares; saved with each checkpoint so a resume can check them."""

    output_dir: str
    max_steps: int = 1000
    train_batch_size: int = 64  # global: split across processes
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_warmup_steps: int = 100
    lr_scheduler: str = "constant"  # or "cosine": decay to 0 at max_steps after the warm-up
    weight_decay: float = 0.0
    max_grad_norm: float | None = None  # clip the gradients' global norm to this (None: never)
    mixed_precision: str = "no"
    seed: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume: str | None = None

    # Settings a resumed run must share with its checkpoint (a trainer adds its own).
    MUST_MATCH: ClassVar[tuple[str, ...]] = ("train_batch_size", "gradient_accumulation_steps",
                                             "seed")

    def check(self) -> None:
        """Raise ``ConfigError`` for settings no run can use (before any work)."""
        if self.max_steps <= 0 or self.train_batch_size <= 0:
            raise ConfigError("--max-steps and --train-batch-size must be positive")
        if self.gradient_accumulation_steps <= 0:
            raise ConfigError("--gradient-accumulation-steps must be positive")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"--mixed-precision {self.mixed_precision!r}: choose no, fp16, bf16")
        if self.lr_scheduler not in ("constant", "cosine"):
            raise ConfigError(f"--lr-scheduler {self.lr_scheduler!r}: choose constant or cosine")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ConfigError(f"--max-grad-norm must be positive (0: no clipping), got "
                              f"{self.max_grad_norm}")
        if self.checkpointing_steps < 0:
            raise ConfigError("--checkpointing-steps must be 0 (never) or positive")

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


# Keyed randomness --------------------------------------------------------------------------------
def generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a stable mix of the integers in ``key``."""
    seed = 0
    for part in key:
        seed = (seed * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def epoch_indices(seed: int, micro_step: int, n_items: int, batch_size: int,
                  *stream: int) -> torch.Tensor:
    """The global batch of micro-step ``micro_step``: epochs are permutations of the ``n_items``
    items seeded by (seed, *stream, epoch), cut into whole batches (a last partial batch is left
    out). ``stream`` tells apart two data sets drawn in one run."""
    per_epoch = n_items // batch_size
    epoch, k = divmod(micro_step, per_epoch)
    order = torch.randperm(n_items, generator=generator(seed, *stream, epoch))
    return order[k * batch_size:(k + 1) * batch_size]


def lr_factor(cfg: LoopConfig, step: int) -> float:
    """Linear warm-up to the full rate, then constant, or a half cosine down to 0 at max_steps
    (Loshchilov & Hutter 2017, SGDR without restarts)."""
    warmup = max(1, cfg.lr_warmup_steps)
    if step < warmup or cfg.lr_scheduler == "constant":
        return min(1.0, (step + 1) / warmup)
    progress = (step - warmup) / max(1, cfg.max_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@contextlib.contextmanager
def ema_weights(ema, model: torch.nn.Module):
    """While the block runs, ``model`` holds the EMA weights of ``ema`` (``None``: its own) and is
    in eval mode; its weights and training mode come back after."""
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        yield
    finally:
        model.train()
        if ema is not None:
            ema.restore(model.parameters())


# Checkpoint folders ------------------------------------------------------------------------------
def list_checkpoints(output_dir: Path) -> list[Path]:
    """The finished checkpoint folders of a run, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(cfg: LoopConfig) -> Path | None:
    """The checkpoint folder ``--resume`` names (``latest``: the newest one); errors before work."""
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        found = list_checkpoints(Path(cfg.output_dir))
        if not found:
            raise FileAccessError(f"--resume latest: no checkpoints in "
                                  f"{cfg.output_dir}/checkpoints; start without --resume")
        return found[-1]
    path = Path(cfg.resume)
    if not (path / STATE_FILE).is_file():
        raise FileAccessError(f"--resume {cfg.resume}: not a checkpoint folder (no {STATE_FILE}); "
                              f"pass a folder under {cfg.output_dir}/checkpoints or 'latest'")
    return path


def read_logs(output_dir: Path) -> list[dict]:
    """The per-step records of ``logs.jsonl`` (empty if none yet)."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class Trainer:
    """One training run. A subclass provides:

    - ``load_data(world_size)``: read and check the data (runs before any model is loaded, so bad
      data fails fast);
    - ``setup(accelerator) -> nn.Module``: load or build the models; return the module whose
      parameters with ``requires_grad`` are trained (what ``accelerator.prepare`` wraps);
    - ``loss(micro_step, positions) -> tensor``: the loss of this process's slice ``positions`` of
      the global batch of micro-step ``micro_step``;
    - ``save()``: write the result (main process only);
    - optionally ``after_step(step)`` (e.g. EMA), ``every_step(step)`` (e.g. validation images,
      main process only), ``checkpoint_objects()`` (more state for checkpoints).

    ``run()`` does the rest and returns the output folder.
    """

    cfg: LoopConfig

    def __init__(self, cfg: LoopConfig):
        cfg.check()
        self.cfg = cfg
        self.output = Path(cfg.output_dir)
        self.resume_from = resolve_resume(cfg)
        self.accelerator: Any = None
        self.model: Any = None  # the trained module, as accelerate prepared it

    # What a trainer provides ------------------------------------------------------------------
    def load_data(self, world_size: int) -> None:
        raise NotImplementedError

    def setup(self, accelerator) -> torch.nn.Module:
        raise NotImplementedError

    def loss(self, micro_step: int, positions: range) -> torch.Tensor:
        raise NotImplementedError

    def save(self) -> None:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """After each optimizer step, on every process."""

    def every_step(self, step: int) -> None:
        """After each step and its checkpoint, on the main process."""

    def checkpoint_objects(self) -> list:
        """Objects with ``state_dict``/``load_state_dict`` saved with each checkpoint."""
        return []

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # The run -----------------------------------------------------------------------------------
    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg = self.cfg
        accelerator = self.accelerator = _make_accelerator(cfg)
        world = accelerator.num_processes
        if cfg.train_batch_size % world:
            raise ConfigError(f"--train-batch-size {cfg.train_batch_size} must divide evenly "
                              f"over {world} processes")
        self.load_data(world)
        model = self.setup(accelerator)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError(f"{type(model).__name__} has no trainable parameters")
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate,
                                      weight_decay=cfg.weight_decay)
        lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
        # The LR schedule is stepped once per optimizer step by us, not by accelerate (which would
        # step it once per process and so warm up P times faster on P processes).
        self.model, optimizer = accelerator.prepare(model, optimizer)
        accelerator.register_for_checkpointing(lr_schedule)
        for obj in self.checkpoint_objects():
            accelerator.register_for_checkpointing(obj)
        _checkpoint_trained_parameters_only(accelerator)

        step = 0 if self.resume_from is None else self._load_checkpoint(self.resume_from)
        if accelerator.is_main_process:
            _keep_logs_up_to(self.output, step)
        bar = tqdm(total=cfg.max_steps, initial=step, desc="training",
                   disable=not accelerator.is_main_process)
        local = cfg.train_batch_size // world
        positions = range(accelerator.process_index * local,
                          (accelerator.process_index + 1) * local)
        self.model.train()
        while step < cfg.max_steps:
            for accum in range(cfg.gradient_accumulation_steps):
                micro = step * cfg.gradient_accumulation_steps + accum
                with accelerator.accumulate(self.model):
                    loss = self.loss(micro, positions)
                    accelerator.backward(loss)
                    if cfg.max_grad_norm and accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            lr_schedule.step()
            step += 1
            self.after_step(step)
            mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if accelerator.is_main_process:
                self._log({"step": step, "loss": mean_loss, "lr": lr_schedule.get_last_lr()[0]})
            if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
                self._save_checkpoint(step)
            if accelerator.is_main_process:
                self.every_step(step)
        bar.close()
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.save()
            write_loss_curve(self.output)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.output

    # Logs and checkpoints ----------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        with open(self.output / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")

    def _save_checkpoint(self, step: int) -> None:
        accelerator, cfg = self.accelerator, self.cfg
        folder = self.output / "checkpoints"
        final = folder / f"{CHECKPOINT_PREFIX}{step}"
        partial = folder / f".{CHECKPOINT_PREFIX}{step}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        if accelerator.is_main_process:
            state = {"step": step, "config": cfg.as_json()}
            atomic_write_text(partial / STATE_FILE, json.dumps(state, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(partial, final)  # a crash before this line leaves only a .partial folder
            if cfg.checkpoints_total_limit:
                for old in list_checkpoints(self.output)[:-cfg.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
            write_loss_curve(self.output)
        accelerator.wait_for_everyone()

    def _load_checkpoint(self, folder: Path) -> int:
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            step = int(state["step"])
            saved = state["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {folder} is corrupt ({STATE_FILE}: {exc}); "
                                  f"resume from an earlier checkpoint or start again") from exc
        current = self.cfg.as_json()
        differ = [k for k in type(self.cfg).MUST_MATCH if saved.get(k) != current.get(k)]
        if differ:
            raise ConfigError(f"checkpoint {folder} was made with different settings for "
                              f"{differ} (saved: {[saved.get(k) for k in differ]}); resume with "
                              f"the same settings or start a new output folder")
        try:
            self.accelerator.load_state(str(folder))
        except Exception as exc:
            raise CheckpointError(f"checkpoint {folder} could not be loaded "
                                  f"({type(exc).__name__}: {exc}); it is incomplete or corrupt: "
                                  f"resume from an earlier checkpoint") from exc
        return step


def _make_accelerator(cfg: LoopConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision; a program (or a test session) may run several trainings one after the other.
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", cfg.mixed_precision) != cfg.mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps)


def _checkpoint_trained_parameters_only(accelerator) -> None:
    """Checkpoints hold the parameters being trained, not the frozen rest (a LoRA checkpoint of
    Stable Diffusion is megabytes, not gigabytes): the frozen weights come from the base model
    again on resume. Loading checks the saved names are exactly the trained ones."""

    def trained(model) -> set[str]:
        return {name for name, p in model.named_parameters() if p.requires_grad}

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            keep = trained(model)
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models, input_dir):
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            state = load_file(path)
            if set(state) != trained(model):
                missing = sorted(trained(model) - set(state))[:3]
                extra = sorted(set(state) - trained(model))[:3]
                raise CheckpointError(f"{path} holds other parameters than this run trains "
                                      f"(missing {missing}, unexpected {extra})")
            model.load_state_dict(state, strict=False)
        models.clear()  # loaded here: accelerate loads the optimizer, schedule and RNG states

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _keep_logs_up_to(output: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old log records."""
    records = [r for r in read_logs(output) if r.get("step", 0) <= step]
    if records or (output / LOG_FILE).exists():
        atomic_write_text(output / LOG_FILE, "".join(json.dumps(r) + "\n" for r in records))


def write_loss_curve(output: Path) -> Path | None:
    """Draw ``loss_curve.png`` from ``logs.jsonl`` (nothing if there are no records)."""
    from .loss_curve import save_loss_curve

    records = read_logs(output)
    if not records:
        return None
    return save_loss_curve([r["step"] for r in records], [r["loss"] for r in records],
                           Path(output) / LOSS_CURVE_FILE)
