"""Training GeoDiffModel on reference conformers: the denoising objective and a plain loop.

Objective (DDPM, Ho et al. 2020, eq. 14, with GeoDiff's noise model): for a molecule with
centred reference positions x_0, a training timestep t and Gaussian noise eps with its centroid
removed (translations carry no information),

    x_t / sqrt(abar_t) = x_0 + sigma_t eps,   loss = || eps - eps_theta(x_0 + sigma_t eps) ||^2

summed over coordinates and averaged over atoms. The model adds its global term only below its
``global_start_sigma`` (GeoDiff samples that way; 0.5 Å by default), so the local term alone
learns the noisier levels and the global branch costs nothing there. Timesteps are drawn in
antithetic pairs (t, T - 1 - t), as GeoDiff does, so each batch covers both ends of the schedule.
Optionally (``low_noise_fraction`` > 0) that share of each batch instead draws its timestep
uniformly among those with sigma_t below ``low_noise_sigma``: the last, low-noise steps of
sampling decide bond lengths, and this spends more of the training on them (used to fine-tune
the shipped model; docs/molecules.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.training import EMAModel

from .graph import MoleculeGraph, batch_graphs


def centred(pos: torch.Tensor, graph: MoleculeGraph) -> torch.Tensor:
    """Positions (N, 3) with each molecule's centroid moved to the origin."""
    sums = pos.new_zeros((graph.num_graphs, 3)).index_add_(0, graph.batch, pos)
    means = sums / graph.atoms_per_graph.unsqueeze(-1).to(pos.dtype)
    return pos - means[graph.batch]


def antithetic_timesteps(num_graphs: int, num_train_timesteps: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """(num_graphs,) timesteps: t_1..t_k uniform, then T - 1 - t_1, ..."""
    half = torch.randint(0, num_train_timesteps, (num_graphs // 2 + 1,), generator=generator)
    return torch.cat([half, num_train_timesteps - 1 - half])[:num_graphs]


def low_noise_timesteps(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, fraction: float,
                        max_sigma: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``timesteps`` with its last round(fraction * len) entries redrawn uniformly among the
    timesteps whose sigma = sqrt((1 - abar) / abar) is below ``max_sigma`` Å."""
    count = round(fraction * len(timesteps))
    if count == 0:
        return timesteps
    abar = alphas_cumprod.double()
    low = int((((1 - abar) / abar).sqrt() < max_sigma).sum())  # sigma grows with t
    if low == 0:
        raise ConfigError(f"no training timestep has sigma below {max_sigma} Å; the smallest is "
                          f"{float(((1 - abar[0]) / abar[0]).sqrt()):.4f} Å")
    drawn = torch.randint(0, low, (count,), generator=generator)
    return torch.cat([timesteps[:len(timesteps) - count], drawn])


def denoising_loss(model, graph: MoleculeGraph, pos: torch.Tensor,
                   alphas_cumprod: torch.Tensor, generator: torch.Generator | None = None,
                   timesteps: torch.Tensor | None = None, low_noise_fraction: float = 0.0,
                   low_noise_sigma: float = 0.2) -> torch.Tensor:
    """The objective of the module docstring for one batch: reference positions ``pos`` (N, 3)
    of the molecules of ``graph``. Without ``timesteps``, they are drawn in antithetic pairs,
    ``low_noise_fraction`` of them below ``low_noise_sigma`` (module docstring)."""
    if timesteps is None:
        timesteps = antithetic_timesteps(graph.num_graphs, len(alphas_cumprod), generator)
        timesteps = low_noise_timesteps(timesteps, alphas_cumprod, low_noise_fraction,
                                        low_noise_sigma, generator)
    abar = alphas_cumprod[timesteps].to(pos.dtype)
    sigma = ((1 - abar) / abar).sqrt()
    noise = centred(torch.randn(pos.shape, generator=generator, dtype=pos.dtype), graph)
    noisy = centred(pos, graph) + sigma[graph.batch].unsqueeze(-1) * noise
    prediction = model(noisy, graph, sigma).sample
    return (prediction - noise).pow(2).sum(-1).mean()


@dataclass
class TrainConfig:
    """What ``train`` needs; ``diffusion-kernel train molecules`` fills it from its flags."""

    data: str
    output_dir: str
    max_steps: int = 4000
    max_minutes: float | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    ema_decay: float = 0.999
    seed: int = 0
    hidden_dim: int = 64
    num_convs: int = 4
    num_convs_local: int = 3
    cutoff: float = 10.0
    edge_order: int = 3
    num_train_timesteps: int = 5000
    beta_start: float = 1e-7
    beta_end: float = 2e-3
    global_start_sigma: float | None = 0.5
    low_noise_fraction: float = 0.0
    low_noise_sigma: float = 0.2
    save_steps: int = 500
    log_steps: int = 100
    init_from: str | None = None
    resume: bool = False


TRAINING_STATE = "training_state.pt"


class ConformerBatches:
    """Random batches of (molecule, one of its reference conformers), seeded."""

    def __init__(self, molecules, edge_order: int, generator: torch.Generator):
        from .processing.molecule_processor import MoleculeProcessor, conformer_positions

        processor = MoleculeProcessor(edge_order)
        self.graphs = [processor.graph(m) for m in molecules]
        self.positions = [conformer_positions(m).float() for m in molecules]
        self.generator = generator

    def sample(self, batch_size: int) -> tuple[MoleculeGraph, torch.Tensor]:
        picks = torch.randint(0, len(self.graphs), (batch_size,), generator=self.generator)
        graphs, positions = [], []
        for k in picks.tolist():
            conformers = self.positions[k]
            c = int(torch.randint(0, conformers.shape[0], (1,), generator=self.generator))
            graphs.append(self.graphs[k])
            positions.append(conformers[c])
        return batch_graphs(graphs), torch.cat(positions)


def build_pipeline(config: TrainConfig, elements: list[int]):
    """A fresh model and the scheduler whose schedule it is trained on, as one pipeline."""
    from diffusion_kernel import registry

    from .models.geodiff import GeoDiffModel
    from .pipelines.conformer import MoleculeConformerPipeline

    model = GeoDiffModel(hidden_dim=config.hidden_dim, num_convs=config.num_convs,
                         num_convs_local=config.num_convs_local, cutoff=config.cutoff,
                         edge_order=config.edge_order, elements=elements,
                         global_start_sigma=config.global_start_sigma)
    scheduler = registry.schedulers.get("DDPMScheduler")(
        num_train_timesteps=config.num_train_timesteps, beta_schedule="sigmoid",
        beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False)
    return MoleculeConformerPipeline(model=model, scheduler=scheduler)


def train(config: TrainConfig, log=print) -> Path:
    """Train on the reference conformers in ``config.data`` (a ``ConformerSet`` .npz) and save
    the pipeline, with the EMA weights, to ``config.output_dir`` every ``save_steps`` and at the
    end (atomically: an interrupted run leaves the last complete save). Stops after
    ``max_steps`` or ``max_minutes``, whichever comes first.

    Each save also writes ``training_state.pt`` (step, raw weights, optimizer, EMA, the batch
    generator) beside the pipeline; with ``resume`` a run continues from it exactly where the
    last save left off (same learning-rate schedule, same batches). ``init_from``: a pipeline
    folder whose model weights the run starts from instead of random ones (a fresh optimizer;
    the architecture flags must match that model's)."""
    from .datasets import ConformerSet

    if config.max_steps < 1 or config.batch_size < 1:
        raise ConfigError("max_steps and batch_size must be positive")
    if not 0.0 <= config.low_noise_fraction <= 1.0 or config.low_noise_sigma <= 0:
        raise ConfigError(f"low_noise_fraction must be in [0, 1] and low_noise_sigma positive, "
                          f"got {config.low_noise_fraction} and {config.low_noise_sigma}")
    data = ConformerSet.load(config.data)
    if not len(data):
        raise ConfigError(f"{config.data} holds no molecules")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    elements = sorted({a.GetAtomicNum() for m in data.molecules for a in m.GetAtoms()})
    pipe = build_pipeline(config, elements)
    model, alphas_cumprod = pipe.model, pipe.scheduler.alphas_cumprod
    if config.init_from:
        _load_weights(model, config.init_from)
    batches = ConformerBatches(data.molecules, config.edge_order, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    first = 1
    if config.resume:
        first = _restore_state(Path(config.output_dir), model, optimizer, ema, generator) + 1
        log(f"resuming at step {first} from {config.output_dir}")
    start, cpu_start, running, seen = time.monotonic(), time.process_time(), 0.0, 0
    for step in range(first, config.max_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, config)
        graph, pos = batches.sample(config.batch_size)
        loss = denoising_loss(model, graph, pos, alphas_cumprod, generator,
                              low_noise_fraction=config.low_noise_fraction,
                              low_noise_sigma=config.low_noise_sigma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        ema.step(model.parameters())
        running, seen = running + loss.item(), seen + 1
        minutes = (time.monotonic() - start) / 60
        done = step == config.max_steps or (config.max_minutes and minutes >= config.max_minutes)
        if step % config.log_steps == 0 or done:
            cpu = (time.process_time() - cpu_start) / 60
            log(f"step {step} loss {running / seen:.4f}"
                f" lr {optimizer.param_groups[0]['lr']:.2e} {minutes:.1f} min ({cpu:.1f} CPU)")
            running, seen = 0.0, 0
        if step % config.save_steps == 0 or done:
            # the state first: the pipeline save's SHA256SUMS then records it as written
            _save_state(Path(config.output_dir), step, model, optimizer, ema, generator)
            _save_ema(pipe, ema, config.output_dir)
        if done:
            break
    return Path(config.output_dir)


def _cosine(step: int, config: TrainConfig) -> float:
    progress = min(step / config.max_steps, 1.0)
    span = config.learning_rate - config.final_learning_rate
    return config.final_learning_rate + 0.5 * span * (1 + math.cos(math.pi * progress))


def _save_ema(pipe, ema: EMAModel, output_dir: str) -> None:
    ema.store(pipe.model.parameters())
    ema.copy_to(pipe.model.parameters())
    try:
        pipe.save_pretrained(output_dir)
    finally:
        ema.restore(pipe.model.parameters())


def _load_weights(model, folder: str) -> None:
    from diffusion_kernel.pipelines import DiffusionPipeline

    source = DiffusionPipeline.from_pretrained(folder).model
    if dict(source.config) != dict(model.config):
        raise ConfigError(f"{folder} holds a model with config {dict(source.config)}, which "
                          f"differs from the one to train {dict(model.config)}; pass the same "
                          f"architecture flags (hidden_dim, num_convs, ...) and data elements")
    model.load_state_dict(source.state_dict())


def _save_state(folder: Path, step: int, model, optimizer, ema: EMAModel,
                generator: torch.Generator) -> None:
    import io

    from diffusion_kernel.hub import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict(), "generator": generator.get_state()}, buffer)
    atomic_write_bytes(folder / TRAINING_STATE, buffer.getvalue())


def _restore_state(folder: Path, model, optimizer, ema: EMAModel,
                   generator: torch.Generator) -> int:
    path = folder / TRAINING_STATE
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist; train without resume, "
                          f"or point output_dir at the folder of an interrupted run")
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    ema.load_state_dict(state["ema"])
    generator.set_state(state["generator"])
    return int(state["step"])
