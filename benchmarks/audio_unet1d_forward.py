"""Forward-pass time of UNet1DModel: ours against the reference (diffusers), same weights, same
inputs, same run.

    python benchmarks/audio_unet1d_forward.py [--repeat N] [--skip-default-threads]

Models (random weights; ours loads the reference's state dict): Dance Diffusion's test layout at
16 kHz (3 levels, 32-64 channels) on 1 s of stereo audio, a deeper Dance Diffusion (6 levels,
up to 128 channels, 2 s), Diffuser's hopper temporal U-Net (horizon 32, batch 64) and its value
function. Each pair runs alternately ``--repeat`` times under ``torch.inference_mode`` after one
warm-up call; the table gives the median time of each, the ratio ours / reference (target: at
most 0.9x) and the largest absolute difference between the outputs. When both run on one
thread the time is the process's CPU time (``clock`` cpu: a shared machine's load, which
deschedules the process for whole milliseconds, does not inflate it; wall times of the 30-80 ms
temporal models swung by 2x between runs here); otherwise it is the wall time (``clock`` wall:
two threads count twice in CPU time, and waiting for each other is what those rows show).

Two thread settings, each its own rows:
- ``1 / 1``: both on one thread (the implementations compared as such);
- ``chosen / default``: ours with the thread count the kernel's commands choose
  (``diffusion_kernel.threads.choose_threads``: the idle cores, at least one) against the
  reference with torch's default (one thread per core), as each runs out of the box. On a loaded
  machine the default's OpenMP threads wait for each other at every small operation.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

DANCE = dict(block_out_channels=(32, 32, 64), extra_in_channels=16, sample_size=16384,
             sample_rate=16000, in_channels=2, out_channels=2, time_embedding_dim=16)
DANCE_DEEP = dict(
    block_out_channels=(32, 32, 64, 64, 128, 128), extra_in_channels=16, sample_size=32768,
    sample_rate=16000, in_channels=2, out_channels=2, time_embedding_dim=16,
    down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "DownBlock1D", "DownBlock1D",
                      "AttnDownBlock1D", "AttnDownBlock1D"),
    up_block_types=("AttnUpBlock1D", "AttnUpBlock1D", "UpBlock1D", "UpBlock1D", "UpBlock1D",
                    "UpBlock1DNoSkip"))
TEMPORAL = dict(in_channels=14, out_channels=14, block_out_channels=(32, 64, 128, 256),
                down_block_types=("DownResnetBlock1D",) * 4,
                up_block_types=("UpResnetBlock1D",) * 3, mid_block_type="MidResTemporalBlock1D",
                out_block_type="OutConv1DBlock", time_embedding_type="positional",
                flip_sin_to_cos=False, freq_shift=1, use_timestep_embedding=True, act_fn="mish",
                sample_size=32)
VALUE = dict(TEMPORAL, up_block_types=(), out_block_type="ValueFunction",
             mid_block_type="ValueFunctionMidBlock1D", downsample_each_block=True)
# name -> (config, batch, length, timestep)
CASES = {
    "dance diffusion, 1 s stereo": (DANCE, 1, 16384, torch.tensor([0.7])),
    "dance diffusion 6 levels, 2 s": (DANCE_DEEP, 1, 32768, torch.tensor([0.4])),
    "temporal U-Net, 64 x hor 32": (TEMPORAL, 64, 32, torch.tensor([10])),
    # (the reference's value head needs one timestep per sample)
    "value function, 64 x hor 32": (VALUE, 64, 32, torch.full((64,), 10)),
}


def build(config):
    from diffusers import UNet1DModel as Reference
    from diffusion_kernel import registry

    torch.manual_seed(0)
    reference = Reference(**config).eval()
    ours = registry.models.get("UNet1DModel")(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def timed(model, sample, timestep, threads: int, into: list, cpu: bool) -> torch.Tensor:
    """One forward pass on ``threads`` threads; its CPU (``cpu``) or wall time is appended to
    ``into``."""
    torch.set_num_threads(threads)
    clock = time.process_time if cpu else time.perf_counter
    with torch.inference_mode():
        start = clock()
        out = model(sample, timestep).sample
        into.append(clock() - start)
    return out


def run_case(name: str, threads: tuple[int, int], repeat: int) -> str:
    config, batch, length, timestep = CASES[name]
    ours, reference = build(config)
    sample = torch.randn(batch, config["in_channels"], length,
                         generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    warm: list[float] = []
    cpu = threads == (1, 1)
    timed(ours, sample, timestep, threads[0], warm, cpu)
    timed(reference, sample, timestep, threads[1], warm, cpu)
    for _ in range(repeat):
        mine = timed(ours, sample, timestep, threads[0], times["ours"], cpu)
        theirs = timed(reference, sample, timestep, threads[1], times["reference"], cpu)
    a, b = statistics.median(times["ours"]), statistics.median(times["reference"])
    diff = (mine - theirs).abs().max().item()
    label = f"{threads[0]} / {threads[1]}"
    return (f"{name:32s} {label:>9s} {'cpu' if cpu else 'wall':>5s} {a * 1e3:10.1f} "
            f"{b * 1e3:12.1f} {a / b:7.2f}x {diff:9.1e} "
            f"{'ok' if a / b <= 0.9 and diff < 1e-4 else 'MISS':>6s}")


def main() -> None:
    from diffusion_kernel.threads import choose_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-default-threads", action="store_true",
                        help="only the one-thread rows")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    default = torch.get_num_threads()
    chosen, why = choose_threads()
    print(f"torch default threads: {default}; chosen for ours: {chosen} ({why}); "
          f"{args.repeat} timed runs each, median")
    header = (f"{'model':32s} {'threads':>9s} {'clock':>5s} {'ours ms':>10s} {'diffusers ms':>12s} "
              f"{'ratio':>8s} {'max diff':>9s} {'target':>6s}")
    print(header)
    print("-" * len(header))
    settings = [(1, 1)] + ([] if args.skip_default_threads else [(chosen, default)])
    for threads in settings:
        for name in CASES:
            print(run_case(name, threads, args.repeat), flush=True)


if __name__ == "__main__":
    main()
