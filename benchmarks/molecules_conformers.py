"""Conformers per second of the shipped GeoDiff model against RDKit's ETKDG (with and without
MMFF94 relaxation), each with the quality of what it made, on the same held-out molecules.

    OMP_NUM_THREADS=1 python benchmarks/molecules_conformers.py [--limit N] [--steps S]
        [--refine-steps R] [--model NAME_OR_PATH] [--json PATH]

Every method generates twice as many conformers as each molecule has references (GeoDiff's
protocol) for the first ``--limit`` molecules (default: all 82) of the shipped NCI test split,
and is scored with the same code (``diffusion_kernel_molecules.evaluation``): COV-R / MAT-R /
COV-P / MAT-P at 0.5 Å (heavy atoms, symmetry-aware RMSD) and the share of bonds within 0.1 Å of
their force-field length. Time counts generation only (not scoring): the model's includes
building the graph and writing RDKit conformers; ETKDG's its embedding (and relaxation). Both run
on one thread. The speed ratio is each method's conformers/s over ETKDG's, measured in the same
run.
"""

from __future__ import annotations

import argparse
import json

METHODS = ("GeoDiff (shipped)", "ETKDG", "ETKDG + MMFF")


def run(limit: int | None, steps: int | None, model: str,
        refine_steps: int | None = None) -> dict[str, dict]:
    import torch
    from diffusion_kernel.cli_extensions import resolve_model
    from diffusion_kernel.pipelines import DiffusionPipeline
    from diffusion_kernel_molecules.commands import SHIPPED_TEST_SET
    from diffusion_kernel_molecules.datasets import ConformerSet
    from diffusion_kernel_molecules.evaluation import etkdg_generator, evaluate, pipeline_generator
    from diffusion_kernel_molecules.pipelines.conformer import REFINE_STEPS

    torch.set_num_threads(1)
    references = ConformerSet.load(SHIPPED_TEST_SET)
    if limit is not None:
        references = references.subset(range(min(limit, len(references))))
    pipe = DiffusionPipeline.from_pretrained(resolve_model(model))
    pipe.set_progress_bar_config(disable=True)
    refine_steps = REFINE_STEPS if refine_steps is None else refine_steps
    generators = {METHODS[0]: pipeline_generator(pipe, steps, refine_steps=refine_steps),
                  METHODS[1]: etkdg_generator(mmff=False),
                  METHODS[2]: etkdg_generator(mmff=True)}
    rows = {name: evaluate(generate, references).summary for name, generate in generators.items()}
    rows[METHODS[0]]["steps"] = steps or pipe.default_num_inference_steps
    rows[METHODS[0]]["refine_steps"] = refine_steps
    return rows


def table(rows: dict[str, dict]) -> str:
    base = rows["ETKDG"]["conformers_per_second"]
    lines = ["| method | conformers | conformers/s | vs ETKDG | COV-R (%) | MAT-R (Å) | COV-P (%) "
             "| MAT-P (Å) | bonds within 0.1 Å (%) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in rows.items():
        label = name
        if "steps" in s:
            label += f", {s['steps']} steps + {s['refine_steps']} refine steps"
        lines.append(
            f"| {label} | {s['conformers']} | {s['conformers_per_second']:.2f} | "
            f"{s['conformers_per_second'] / base:.3f}x | {100 * s['cov_r_mean']:.1f} | "
            f"{s['mat_r_mean']:.3f} | {100 * s['cov_p_mean']:.1f} | {s['mat_p_mean']:.3f} | "
            f"{100 * s['bonds_within_0.1']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="first N test molecules (default: all)")
    parser.add_argument("--steps", type=int, help="model steps (default: the shipped setting)")
    parser.add_argument("--refine-steps", type=int,
                        help="refine steps after the model's last step (default: the pipeline's)")
    parser.add_argument("--model", default="conformers", help="pipeline folder or shipped name")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = run(args.limit, args.steps, args.model, args.refine_steps)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
