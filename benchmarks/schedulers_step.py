"""Per-step overhead of every registered scheduler against the diffusers reference.

For each scheduler and sample shape, both implementations run the same sampling loop
(``set_timesteps(50)``, then for every timestep ``scale_model_input`` and ``step`` with a fixed
model output); only the ``step`` call is timed (``step_pred`` for the score-SDE classes). Runs of
ours and of the reference alternate, so machine load hits both alike. The table gives the median
step time in microseconds, the ratio ours / reference and whether it meets the target (<= 0.5x).
Steps that draw Gaussian noise draw exactly the reference's numbers from the same generator, so
one ``torch.randn`` of the sample's shape bounds both from below: the ``draw/ref`` column is that
draw's time over the reference's step (KDPM2-a draws on every second step only, so its median
step may be of either kind).

    python benchmarks/schedulers_step.py [--steps 50] [--repeats 5] [--only Euler,Heun]

The reference (diffusers) is a benchmark-only dependency, as in the tests.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
import warnings

import torch

TARGET = 0.5
SHAPES = ((1, 4, 64, 64), (4, 4, 128, 128))


def _reference_class(name: str):
    import diffusers
    import diffusers.schedulers as schedulers

    return getattr(diffusers, name, None) or getattr(schedulers, name)


def _step_function(scheduler):
    """The per-step call of a scheduler as its pipeline makes it: (callable, takes generator)."""
    if hasattr(scheduler, "step_pred") and not hasattr(scheduler, "set_begin_index") or \
            type(scheduler).__name__.startswith("ScoreSde"):
        step = scheduler.step_pred
    else:
        step = scheduler.step
    return step, "generator" in inspect.signature(step).parameters


def _one_run(scheduler, steps: int, sample: torch.Tensor, model_output: torch.Tensor,
             times: list[float]) -> bool:
    """A sampling loop of ``steps`` steps; appends each step's wall time (seconds) to ``times``.
    Returns whether the steps drew random numbers (the generator advanced)."""
    name = type(scheduler).__name__
    scheduler.set_timesteps(steps)
    if name == "ScoreSdeVeScheduler":
        scheduler.set_sigmas(steps)
    step, takes_generator = _step_function(scheduler)
    kwargs = {"generator": torch.Generator().manual_seed(0)} if takes_generator else {}
    start_state = kwargs["generator"].get_state() if takes_generator else None
    x = sample.clone()
    batch = x.shape[0]
    for t in scheduler.timesteps:
        if name == "ScoreSdeVpScheduler":
            t_arg = t * torch.ones(batch)
            start = time.perf_counter()
            out = step(model_output, x, t_arg, **kwargs)
            times.append(time.perf_counter() - start)
            x = out[0]
            continue
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") \
            else x
        del x_in
        start = time.perf_counter()
        out = step(model_output, t, x, **kwargs)
        times.append(time.perf_counter() - start)
        x = out.prev_sample if hasattr(out, "prev_sample") else out[0]
    return takes_generator and not torch.equal(kwargs["generator"].get_state(), start_state)


def measure(name: str, shape: tuple[int, ...], steps: int,
            repeats: int) -> tuple[float, float, bool]:
    """Median step time (microseconds) of ours and of the reference for one scheduler/shape, and
    whether its steps draw Gaussian noise."""
    from diffusion_kernel import registry

    ours = registry.schedulers.get(name)()
    theirs = _reference_class(name)()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(shape, generator=generator)
    model_output = torch.randn(shape, generator=generator) * 0.5
    ours_times: list[float] = []
    theirs_times: list[float] = []
    draws = _one_run(ours, steps, sample, model_output, [])  # warm-up
    _one_run(theirs, steps, sample, model_output, [])
    for _ in range(repeats):
        _one_run(ours, steps, sample, model_output, ours_times)
        _one_run(theirs, steps, sample, model_output, theirs_times)
    return statistics.median(ours_times) * 1e6, statistics.median(theirs_times) * 1e6, draws


def noise_draw_us(shape: tuple[int, ...], repeats: int = 50) -> float:
    """Median time (microseconds) of one standard-normal draw of ``shape`` from a generator."""
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.randn(shape, generator=generator)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated substrings of class names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its config-change notices would break the table
    from diffusion_kernel import registry

    names = sorted(registry.schedulers.names())
    if args.only:
        wanted = [w.strip().lower() for w in args.only.split(",")]
        names = [n for n in names if any(w in n.lower() for w in wanted)]
    header = (f"{'scheduler':34s} {'shape':>15s} {'ours us':>9s} {'diffusers us':>12s} "
              f"{'ratio':>7s} {'draw/ref':>9s} {'target':>7s}")
    print(f"median step time, {args.steps} steps, {args.repeats} runs, float32, "
          f"{args.threads} torch thread(s)")
    print(header)
    print("-" * len(header))
    misses = bound = 0
    draw_us = {shape: noise_draw_us(shape) for shape in SHAPES}
    for name in names:
        for shape in SHAPES:
            try:
                ours_us, theirs_us, draws = measure(name, shape, args.steps, args.repeats)
            except Exception as exc:  # a scheduler that cannot run the loop is reported, not hidden
                print(f"{name:34s} {str(shape):>15s}  failed: {type(exc).__name__}: {exc}")
                misses += 1
                continue
            ratio = ours_us / theirs_us
            # A step that draws noise draws exactly the reference's numbers (same generator,
            # same samples), so one torch.randn of the sample's shape is a floor for both.
            floor = draw_us[shape] / theirs_us if draws else None
            ok = "ok" if ratio <= TARGET else "MISS"
            misses += ratio > TARGET
            bound += ratio > TARGET and floor is not None and floor > TARGET
            floor_text = f"{floor:8.2f}x" if floor is not None else f"{'-':>9s}"
            print(f"{name:34s} {str(shape):>15s} {ours_us:9.1f} {theirs_us:12.1f} "
                  f"{ratio:6.2f}x {floor_text} {ok:>7s}")
    print(f"\ntarget: ours <= {TARGET}x the reference; {misses} row(s) miss it, {bound} of them "
          f"where the noise draw alone costs more than {TARGET}x the reference's step")
    for shape in SHAPES:
        print(f"one torch.randn{shape} with a generator: {draw_us[shape]:.1f} us")


if __name__ == "__main__":
    main()
