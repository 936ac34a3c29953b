"""Planning time per decision of ValueGuidedRLPipeline: ours against the reference's
(diffusers' experimental one) on the same networks, batch 64, horizon 64.

    python benchmarks/rl_planning.py [--repeat N] [--threads T] [--batch-size B] [--random]

The networks are the shipped planner's temporal UNet (1.0 M parameters, a 32-step DDPM chain)
and the shipped value function (UNet1DModel value configuration), loaded once by each library
from the same folders (``--random``: the same configurations with random weights). Both pipelines
run on the point maze with a fixed goal and diffusers' semantics (global normalisation, its
gradient scaling, 2 guide steps, scale 0.1), from the same observation and seed. After one
warm-up call each, they run alternately ``--repeat`` times; the table gives the median CPU time
of one decision (the process's CPU time: one thread, so load on a shared machine does not
inflate it; the wall time is shown beside it), the ratio ours / reference (target: at most 0.8x)
and the largest difference between the two actions.

Threads: ``--threads`` (default: as the kernel's commands choose, the idle cores; on a loaded
2-core machine that is one, where small convolutions run fastest).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

SHIPPED = Path(__file__).resolve().parents[1] / "plugins/rl/diffusion_kernel_rl/shipped"
OBS = np.array([1.0, 1.0, 0.0, 0.0], dtype=np.float32)
GOAL = (6.0, 6.0)


def networks(random: bool):
    """(value, unet) pairs for each library, with the same weights, and the scheduler folder."""
    import diffusers
    from diffusion_kernel import registry
    from diffusion_kernel_rl.training import planner_unet, value_unet

    ours_cls = registry.models.get("UNet1DModel")
    if random:
        torch.manual_seed(0)
        unet, value = planner_unet(64, (32, 64, 128)), value_unet(64, (16, 32, 64, 128))
        theirs = (diffusers.UNet1DModel(**dict(value.config)),
                  diffusers.UNet1DModel(**dict(unet.config)))
        theirs[0].load_state_dict(value.state_dict())
        theirs[1].load_state_dict(unet.state_dict())
        return (value.eval(), unet.eval()), tuple(m.eval() for m in theirs)
    folders = (SHIPPED / "maze2d-medium-value", SHIPPED / "maze2d-medium-planner" / "unet")
    ours = tuple(ours_cls.from_pretrained(f).eval() for f in folders)
    theirs = tuple(diffusers.UNet1DModel.from_pretrained(f).eval() for f in folders)
    return ours, theirs


def quiet_reference_progress() -> None:
    """The reference draws its progress bar with ``tqdm.tqdm`` itself: switch it off."""
    import functools

    import tqdm

    tqdm.tqdm = functools.partial(tqdm.tqdm, disable=True)


def pipelines(random: bool):
    import diffusers
    from diffusers.experimental import ValueGuidedRLPipeline as Reference
    from diffusion_kernel import registry
    from diffusion_kernel_rl.env import PointMazeEnv
    from diffusion_kernel_rl.training import planner_scheduler

    (value, unet), (ref_value, ref_unet) = networks(random)
    scheduler = planner_scheduler(32)
    env = PointMazeEnv("medium", goal=GOAL, reward_type="geodesic")
    ours = registry.pipelines.get("ValueGuidedRLPipeline")(
        value_function=value, unet=unet, scheduler=scheduler, env=env)
    config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    reference = Reference(value_function=ref_value, unet=ref_unet,
                          scheduler=diffusers.DDPMScheduler(**config), env=env)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    return ours, reference


def timed(pipe, batch_size: int, horizon: int, seed: int):
    torch.manual_seed(seed)
    cpu, wall = time.process_time(), time.perf_counter()
    action = pipe(OBS, batch_size=batch_size, planning_horizon=horizon, n_guide_steps=2,
                  scale=0.1)
    return time.process_time() - cpu, time.perf_counter() - wall, np.asarray(action)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=64)
    parser.add_argument("--random", action="store_true",
                        help="random networks instead of the shipped ones")
    args = parser.parse_args()
    from diffusion_kernel.threads import choose_threads

    threads, why = choose_threads(args.threads)
    torch.set_num_threads(threads)
    ours, reference = pipelines(args.random)
    quiet_reference_progress()  # after the imports: huggingface_hub annotates with tqdm.tqdm
    runs: dict[str, list] = {"ours": [], "diffusers": []}
    for i in range(args.repeat + 1):  # the first round warms up
        for name, pipe in (("ours", ours), ("diffusers", reference)):
            result = timed(pipe, args.batch_size, args.horizon, seed=i)
            if i:
                runs[name].append(result)
    cpu = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    wall = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    gap = max(float(np.abs(a[2] - b[2]).max()) for a, b in zip(runs["ours"], runs["diffusers"]))
    networks_used = "random" if args.random else "shipped"
    print(f"ValueGuidedRLPipeline, {networks_used} networks, batch {args.batch_size}, horizon "
          f"{args.horizon}, 32 steps x 2 guide steps; {threads} thread(s) ({why}); "
          f"median of {args.repeat}")
    print("| implementation | CPU s / decision | wall s / decision | ratio (CPU) |")
    print("| --- | --- | --- | --- |")
    for name in ("ours", "diffusers"):
        print(f"| {name} | {cpu[name]:.2f} | {wall[name]:.2f} | "
              f"{cpu[name] / cpu['diffusers']:.2f}x |")
    print(f"largest difference between the actions: {gap:.2e}; target 0.8x: "
          f"{'met' if cpu['ours'] <= 0.8 * cpu['diffusers'] else 'missed'}")


if __name__ == "__main__":
    main()
