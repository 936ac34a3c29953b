"""Choosing the conformer sampler's settings on training molecules, never on the held-out ones:
COV/MAT and the bonds within 0.1 Å of their force-field length for each count of DDPM steps and of
noise-free refine steps after them (``MoleculeConformerPipeline(refine_steps=)``).

    OMP_NUM_THREADS=1 python benchmarks/molecules_sampler_calibration.py --data train.npz
        [--limit 20] [--model conformers] [--steps 50,100,200] [--refine 0,30,50,100,200]
        [--json PATH]

``--data``: reference conformers of training molecules (``diffusion-kernel train molecules``
caches them beside its output folder as ``<output>-nci-train.npz``; or
``datasets.build_nci_split("train").save(path)``). Twice as many conformers as references per
molecule, as in the evaluation. For speed every molecule's conformers run as one batch through
the pipeline's own scheduler and noise estimate with one generator (seed 0), so figures differ
from ``diffusion-kernel evaluate molecules`` (one generator per conformer) by sampling noise; the
refine counts are cumulative on the same chain ends. Each row lists the mean over molecules.
"""

from __future__ import annotations

import argparse
import json


def chain_ends(pipe, references, steps: int, seed: int = 0):
    """Positions (N, 3) after ``steps`` scheduler steps for all molecules at once, the batch
    graph and conformers per molecule."""
    import torch
    from diffusion_kernel.sampling_loop import step_kwargs
    from diffusion_kernel_molecules.graph import batch_graphs
    from diffusion_kernel_molecules.pipelines.conformer import sigmas_at
    from diffusion_kernel_molecules.training import centred

    counts = [2 * m.GetNumConformers() for m in references.molecules]
    graph = batch_graphs([pipe.processor.graph(m).repeat(k)
                          for m, k in zip(references.molecules, counts)])
    generator = torch.Generator().manual_seed(seed)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    x = centred(torch.randn(graph.num_atoms, 3, generator=generator), graph)
    options = dict(w_global=1.0, global_start_sigma=None, clip=1000.0, clip_local=None)
    for t, sigma in zip(scheduler.timesteps, sigmas_at(scheduler.alphas_cumprod,
                                                       scheduler.timesteps)):
        model_input = scheduler.scale_model_input(x, t) * (1.0 + sigma**2) ** 0.5
        eps = pipe._noise_estimate(model_input, graph, sigma, options)
        x = scheduler.step(eps, t, x, **step_kwargs(scheduler, generator)).prev_sample
        x = centred(x, graph)
    return x, graph, counts, options


def refined(pipe, x, graph, options, count: int):
    """``count`` refine steps x <- x - s * eps(x, s), as the pipeline ends its sampling."""
    import torch
    from diffusion_kernel_molecules.pipelines.conformer import sigmas_at
    from diffusion_kernel_molecules.training import centred

    s = sigmas_at(pipe.scheduler.alphas_cumprod, torch.zeros(1))[0]
    for _ in range(count):
        x = centred(x - s * pipe._noise_estimate(x, graph, s, options), graph)
    return x


def scores(x, references, counts) -> dict[str, float]:
    import numpy as np
    from diffusion_kernel_molecules.metrics import (
        bond_length_accuracy,
        coverage_matching,
        rmsd_matrix,
    )
    from diffusion_kernel_molecules.processing.molecule_processor import with_conformers

    rows, start = [], 0
    for mol, k in zip(references.molecules, counts):
        n = mol.GetNumAtoms()
        generated = with_conformers(mol, x[start:start + k * n].reshape(k, n, 3).double())
        start += k * n
        score = coverage_matching(rmsd_matrix(generated, mol))
        rows.append([score.cov_r, score.mat_r, score.cov_p, score.mat_p,
                     bond_length_accuracy(generated, mol)])
    names = ("cov_r", "mat_r", "cov_p", "mat_p", "bonds_within_0.1")
    return dict(zip(names, np.mean(rows, axis=0).tolist()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="reference conformers of training molecules")
    parser.add_argument("--limit", type=int, default=20, help="the first N molecules")
    parser.add_argument("--model", default="conformers")
    parser.add_argument("--steps", default="50,100,200", help="DDPM step counts, comma-separated")
    parser.add_argument("--refine", default="0,30,50,100,200",
                        help="refine step counts, comma-separated")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    import torch
    from diffusion_kernel.cli_extensions import resolve_model
    from diffusion_kernel.pipelines import DiffusionPipeline
    from diffusion_kernel_molecules.datasets import ConformerSet

    torch.set_num_threads(1)
    references = ConformerSet.load(args.data)
    references = references.subset(range(min(args.limit, len(references))))
    pipe = DiffusionPipeline.from_pretrained(resolve_model(args.model))
    rows = []
    print("| DDPM steps | refine steps | COV-R (%) | MAT-R (Å) | COV-P (%) | MAT-P (Å) | "
          "bonds within 0.1 Å (%) |\n| --- | --- | --- | --- | --- | --- | --- |")
    with torch.no_grad():
        for steps in [int(s) for s in args.steps.split(",")]:
            x, graph, counts, options = chain_ends(pipe, references, steps)
            done = 0
            for count in sorted(int(r) for r in args.refine.split(",")):
                x = refined(pipe, x, graph, options, count - done)
                done = count
                row = {"steps": steps, "refine_steps": count, **scores(x, references, counts)}
                rows.append(row)
                print(f"| {steps} | {count} | {100 * row['cov_r']:.1f} | {row['mat_r']:.3f} | "
                      f"{100 * row['cov_p']:.1f} | {row['mat_p']:.3f} | "
                      f"{100 * row['bonds_within_0.1']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
