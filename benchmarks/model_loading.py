"""How fast, and in how much memory, a Stable-Diffusion-1.5-size U-Net loads: ours against the
reference implementation (diffusers), on the same files, in the same run.

    python benchmarks/model_loading.py [--work DIR] [--repeat N] [--cases a,b,...]

The checkpoint is a ``UNet2DConditionModel(cross_attention_dim=768, sample_size=64)`` (every
other argument at its default: 859.5M parameters) with random weights, saved by the reference as
a 3.4 GB float32 file plus an ``fp16`` variant into ``benchmarks/_work`` (made once, reused).

Every measurement runs in a fresh interpreter with the page cache warm (the files are read once
beforehand, so the disk is out of the picture). A child reports its RSS after imports, the wall
time of ``from_pretrained``, the wall time of touching every weight afterwards (a sum over each
parameter: a forward pass reads them all too), and its peak RSS (``ru_maxrss``). "Peak" in the
table is that peak minus the RSS after imports, i.e. what loading itself costs; it includes the
touch, because memory-mapped weights become resident only when read. Ours and the reference
alternate run by run, so a busy machine slows both alike; times are the median of ``--repeat``
runs (the fastest is shown too), CPU seconds are user + system time of the load, peaks are the
largest seen. ``--threads N`` sets torch's thread count in every child (both sides alike).

Integrity: ours always checks the whole safetensors format (its header's cost is timed alone, in
this process); ``verify=True`` also hashes the file against its recorded sha256, and a save
records the hashes of what it wrote. Their cost is judged against one pass of sha256 over the
file (timed here, page cache warm, next to a plain read): the "verify" case's extra time over the
"fp32" case, and the "save" case's extra time over the reference's save (a save into a fresh
folder, timed in the child after loading the checkpoint), must each stay within 1.1 such passes.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GB = 1e9
CHECKPOINT_ARGS = {"cross_attention_dim": 768, "sample_size": 64}
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_FP16 = "diffusion_pytorch_model.fp16.safetensors"


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    ours: dict  # from_pretrained keyword arguments (dtype given by name)
    reference: dict
    target: str  # what the table checks; see judge()


CASES = [
    Case("fp32", "fp32 file -> fp32 model (mmap)", {}, {}, "time<=1.0x ref; peak<=1.05x file"),
    Case("fp16", "fp32 file -> fp16 model", {"torch_dtype": "float16"},
         {"torch_dtype": "float16"}, "time<=0.5x ref; peak<=1.2x kept"),
    Case("nommap", "fp32 file -> fp32 model, no mmap", {"mmap": False},
         {"disable_mmap": True}, "peak<=1.2x kept"),
    Case("nommap16", "fp32 file -> fp16 model, no mmap",
         {"mmap": False, "torch_dtype": "float16"},
         {"disable_mmap": True, "torch_dtype": "float16"}, "peak<=1.2x kept"),
    Case("variant", "fp16 variant -> fp16 model (mmap)",
         {"variant": "fp16", "torch_dtype": "float16"},
         {"variant": "fp16", "torch_dtype": "float16"}, "time<=1.0x ref; peak<=1.05x file"),
    Case("verify", "fp32 file -> fp32 model, verify=True", {"verify": True}, {},
         "extra<=1.1x hash"),
    Case("save", "save the fp32 model (load, then save)", {"_save": True}, {"_save": True},
         "extra<=1.1x hash"),
]


# The checkpoint ------------------------------------------------------------------------------
def prepare(work: Path) -> Path:
    """Save the reference's SD-1.5-shape U-Net (random weights) as fp32 and fp16; reuse if there."""
    folder = work / "sd15-unet"
    if (folder / WEIGHTS).is_file() and (folder / WEIGHTS_FP16).is_file():
        return folder
    print(f"writing the checkpoint to {folder} (once) ...", flush=True)
    code = f"""
import torch
from diffusers import UNet2DConditionModel
torch.manual_seed(0)
unet = UNet2DConditionModel(**{CHECKPOINT_ARGS!r})
unet.save_pretrained({str(folder)!r})
unet.half().save_pretrained({str(folder)!r}, variant="fp16")
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return folder


def record_hashes(folder: Path) -> None:
    """The reference saves no SHA256SUMS: record one (as ``diffusion-kernel verify --record``)
    so that ``verify=True`` has hashes to check against."""
    from diffusion_kernel.hub import record_hashes

    if not (folder / "SHA256SUMS").is_file():
        record_hashes(folder)


def warm_page_cache(folder: Path) -> None:
    for name in (WEIGHTS, WEIGHTS_FP16):
        with open(folder / name, "rb") as f:
            while f.read(64 << 20):
                pass


def file_passes(path: Path, repeat: int = 3) -> dict:
    """Seconds for one plain read and one sha256 pass over the file (page cache warm, median;
    the pass's CPU seconds too), and CPU seconds of the format checks of its header alone
    (median of 20)."""
    from diffusion_kernel.integrity import file_sha256
    from diffusion_kernel.weights import SafetensorsFile

    def read() -> None:
        with open(path, "rb", buffering=0) as f:
            buffer = bytearray(16 << 20)
            while f.readinto(buffer):
                pass

    def timed(call, n, clock=time.perf_counter):
        times = []
        for _ in range(n):
            start = clock()
            call()
            times.append(clock() - start)
        return statistics.median(times)

    with SafetensorsFile(path, mmap_file=False) as file:
        size = path.stat().st_size - file._data_start

        def checks() -> None:
            for name, info in file.header.items():
                file._check_entry(name, info)
            file._check_layout(file.header, size)

        return {"read": timed(read, repeat), "hash": timed(lambda: file_sha256(path), repeat),
                "hash_cpu": timed(lambda: file_sha256(path), repeat, cpu_seconds),
                "checks": timed(checks, 20, time.process_time), "tensors": len(file.header)}


# One measurement, in a child interpreter -----------------------------------------------------
def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(impl: str, folder: str, kwargs: dict, threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)

    if impl == "ours":
        from diffusion_kernel import registry

        model_cls = registry.models.get("UNet2DConditionModel")
    else:
        from diffusers import UNet2DConditionModel as model_cls
    if "torch_dtype" in kwargs:
        kwargs = {**kwargs, "torch_dtype": getattr(torch, kwargs["torch_dtype"])}
    save = kwargs.pop("_save", False)
    baseline = rss_now()
    start, cpu = time.perf_counter(), cpu_seconds()
    model = model_cls.from_pretrained(folder, **kwargs)
    load, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
    touch = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = sum(p.numel() * p.element_size() for p in model.parameters())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    if save:  # the figure of this case is the save's time
        out = Path(folder).parent / f"_saved_{impl}"
        shutil.rmtree(out, ignore_errors=True)
        start, cpu = time.perf_counter(), cpu_seconds()
        model.save_pretrained(out)
        load, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        shutil.rmtree(out)
    print(json.dumps({"load": load, "cpu": cpu, "touch": touch, "baseline": baseline, "peak": peak,
                      "peak_load": peak_load, "kept": kept, "dtypes": dtypes,
                      "class": f"{type(model).__module__}.{type(model).__name__}"}))


def measure(impl: str, folder: Path, kwargs: dict, threads: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", impl, str(folder), json.dumps(kwargs),
         str(threads)],
        capture_output=True, text=True, cwd=HERE,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{impl} {kwargs} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# The table -----------------------------------------------------------------------------------
def summarise(runs: list[dict]) -> dict:
    first = runs[0]
    return {
        "load": statistics.median(r["load"] for r in runs),
        "fastest": min(r["load"] for r in runs),
        "cpu": statistics.median(r["cpu"] for r in runs),
        "touch": statistics.median(r["touch"] for r in runs),
        "peak": max(r["peak"] - r["baseline"] for r in runs),
        "kept": first["kept"], "dtypes": first["dtypes"], "class": first["class"],
    }


def judge(case: Case, ours: dict, ref: dict, file_size: int,
          passes: dict[str, float] | None = None) -> list[str]:
    verdicts = []
    for rule in case.target.split("; "):
        what, limit = rule.split("<=")
        factor, base = limit.split("x ")
        factor = float(factor)
        if what == "extra":  # time over the plain case (loads) or the reference's (saves)
            # Judged on wall and on CPU seconds: on a busy machine the wall clock mostly
            # measures the wait for a core, CPU seconds the work done.
            for clock, key, one_pass in (("wall", "load", "hash"), ("cpu", "cpu", "hash_cpu")):
                plain = passes[f"fp32_{key}"] if case.name == "verify" else ref[key]
                extra, bound = ours[key] - plain, factor * passes[one_pass]
                verdicts.append(f"{clock}: extra {extra:.2f}s <= {bound:.2f}s ({factor}x one "
                                f"sha256 pass): {'yes' if extra <= bound else 'NO'}")
        elif what == "time":
            value, bound = ours["load"], factor * ref["load"]
            ok = value <= bound
            verdicts.append(f"load {value:.2f}s <= {bound:.2f}s: {'yes' if ok else 'NO'}")
        else:
            reference = file_size if base == "file" else ours["kept"]
            ok = ours["peak"] <= factor * reference
            verdicts.append(f"peak {ours['peak'] / reference:.2f}x {base} <= {factor}x: "
                            f"{'yes' if ok else 'NO'}")
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / "_work")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    parser.add_argument("--only", choices=("ours", "reference"), default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], json.loads(args.child[2]), int(args.child[3]))
        return 0
    folder = prepare(args.work)
    record_hashes(folder)
    sizes = {"fp32": (folder / WEIGHTS).stat().st_size,
             "fp16": (folder / WEIGHTS_FP16).stat().st_size}
    print(f"checkpoint: {folder}  fp32 {sizes['fp32'] / GB:.2f} GB, "
          f"fp16 {sizes['fp16'] / GB:.2f} GB; torch threads: {args.threads or 'default'}")
    print(f"load s: median of {args.repeat} fresh interpreters (fastest in brackets); "
          f"peak = max RSS minus RSS after imports\n")
    header = (f"{'case':34} {'impl':9} {'load s':>14} {'cpu s':>6} {'touch s':>7} "
              f"{'peak GB':>8} {'kept GB':>8} {'load ratio':>10} {'peak ratio':>10}")
    print(header)
    print("-" * len(header))
    verdicts = []
    passes = file_passes(folder / WEIGHTS)
    print(f"one pass over the fp32 file: read {passes['read']:.2f} s, sha256 "
          f"{passes['hash']:.2f} s ({sizes['fp32'] / GB / passes['hash']:.2f} GB/s, "
          f"{passes['hash_cpu']:.2f} CPU s); format "
          f"checks of its header ({passes['tensors']} tensors): {passes['checks'] * 1e3:.2f} CPU ms"
          f"\n")
    chosen = [c for c in CASES if c.name in args.cases.split(",")]
    if any(c.name == "verify" for c in chosen) and not any(c.name == "fp32" for c in chosen):
        chosen.insert(0, next(c for c in CASES if c.name == "fp32"))  # verify's baseline
    for case in chosen:
        file_size = sizes["fp16" if case.ours.get("variant") == "fp16" else "fp32"]
        sides = [(impl, kwargs) for impl, kwargs in (("ours", case.ours),
                                                      ("reference", case.reference))
                 if not args.only or impl == args.only]
        runs: dict[str, list[dict]] = {impl: [] for impl, _ in sides}
        for _ in range(args.repeat):
            for impl, kwargs in sides:  # alternate, so both see the same machine load
                warm_page_cache(folder)
                runs[impl].append(measure(impl, folder, kwargs, args.threads))
        results = {impl: summarise(r) for impl, r in runs.items()}
        if case.name == "fp32" and "ours" in results:
            passes["fp32_load"] = results["ours"]["load"]
            passes["fp32_cpu"] = results["ours"]["cpu"]
        for impl, r in results.items():
            ref = results.get("reference")
            load_ratio = f"{r['load'] / ref['load']:.2f}x" if ref else "-"
            peak_ratio = f"{r['peak'] / ref['peak']:.2f}x" if ref else "-"
            load = f"{r['load']:.2f} ({r['fastest']:.2f})"
            print(f"{case.title if impl == 'ours' else '':34} {impl:9} {load:>14} "
                  f"{r['cpu']:6.2f} {r['touch']:7.2f} {r['peak'] / GB:8.2f} {r['kept'] / GB:8.2f} "
                  f"{load_ratio:>10} {peak_ratio:>10}", flush=True)
        if "ours" in results and "reference" in results:
            verdicts.append((case.title, judge(case, results["ours"], results["reference"],
                                               file_size, passes)))
    print("\ntargets (ours):")
    for title, lines in verdicts:
        print(f"  {title}: " + "; ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
