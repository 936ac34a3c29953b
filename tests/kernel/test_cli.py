"""The ``diffusion-kernel`` command line, run in-process through ``cli.main``."""

from __future__ import annotations

import json
from dataclasses import dataclass

import diffusion_kernel
import pytest
import torch
from diffusion_kernel import hookimpl
from diffusion_kernel.cli import main
from diffusion_kernel.outputs import OutputWriter
from diffusion_kernel.pipelines import DiffusionPipeline, PipelineOutput


def test_plugins_lists_each_plugin_and_what_it_registered(toys, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "toys: (in-process) [loaded]" in out
    assert "  models (1): ToyModel" in out
    assert "  schedulers (2): ToyOtherScheduler, ToyScheduler" in out


def test_registry_lists_one_kind_with_aliases_plugin_and_presets(toys, capsys):
    assert main(["registry", "schedulers"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("schedulers:\n")
    assert "  ToyScheduler  (aliases: toy-sched)  [toys]" in out
    assert "    toy-v: ToyScheduler with prediction_type='v_prediction', eta=0.5" in out
    assert "models:" not in out


def test_registry_without_kind_lists_all_four(toys, capsys):
    assert main(["registry"]) == 0
    out = capsys.readouterr().out
    for kind in ("models:", "schedulers:", "pipelines:", "processors:"):
        assert kind in out
    assert "  ToyModel  (aliases: toy)  [toys]" in out


def test_registry_rejects_an_unknown_kind(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["registry", "samplers"])
    assert exc.value.code == 2
    assert "invalid choice: 'samplers'" in capsys.readouterr().err


def test_info_prints_the_description_as_json(toys, capsys):
    assert main(["info", "toy-sched"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "ToyScheduler"
    assert info["kind"] == "schedulers"
    assert info["plugin"] == "toys"
    assert info["summary"] == "A one-step toy scheduler: x <- x - eta * model_output."
    assert info["aliases"] == ["toy-sched"]


def test_info_of_an_unknown_name_fails_with_suggestions(toys, capsys):
    assert main(["info", "ToyShceduler"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: 'ToyShceduler' is not a registered model")
    assert "Did you mean: ToyScheduler" in captured.err


def test_info_of_a_broken_lazy_target_reports_the_plugin_error(register_plugin, capsys):
    class Broken:
        @hookimpl
        def register_models(self, register):
            register("no_such_module_abc:Ghost")

    register_plugin(Broken(), "ghostly")
    assert main(["info", "Ghost"]) == 2
    err = capsys.readouterr().err
    assert "model 'Ghost' is registered by plugin 'ghostly'" in err
    assert "ModuleNotFoundError" in err


def test_no_command_prints_help_and_fails_as_a_usage_error(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: diffusion-kernel" in err
    for verb in ("generate", "train", "evaluate", "plugins"):
        assert f"    {verb} " in err


def test_version_names_the_kernel_and_each_plugin(toys, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"diffusion-kernel {diffusion_kernel.__version__}"
    assert "  toys: (in-process) [loaded]" in lines


class CommandPlugin:
    @hookimpl
    def register_commands(self, subparsers):
        p = subparsers.add_parser("toy-count", help="count to N")
        p.add_argument("n", type=int)
        p.set_defaults(func=lambda args: print(" ".join(map(str, range(1, args.n + 1)))) or 0)


def test_hook_register_commands(register_plugin, capsys):
    register_plugin(CommandPlugin(), "counter")
    assert main(["toy-count", "3"]) == 0
    assert capsys.readouterr().out == "1 2 3\n"


def test_plugin_command_errors_from_the_family_exit_with_status_2(register_plugin, capsys):
    from diffusion_kernel.errors import ConfigError

    class Failing:
        @hookimpl
        def register_commands(self, subparsers):
            def fail(args):
                raise ConfigError("bad value; fix it")

            subparsers.add_parser("toy-fail").set_defaults(func=fail)

    register_plugin(Failing(), "failing")
    assert main(["toy-fail"]) == 2
    assert capsys.readouterr().err == "error: bad value; fix it\n"


def test_plugin_whose_command_hook_raises_is_skipped(register_plugin, toys, capsys):
    class Broken:
        @hookimpl
        def register_commands(self, subparsers):
            raise RuntimeError("no commands today")

    register_plugin(Broken(), "broken-commands")
    assert main(["registry", "models"]) == 0
    captured = capsys.readouterr()
    assert "ToyModel" in captured.out
    assert "plugin 'broken-commands'" in captured.err and "no commands today" in captured.err


def test_commands_of_a_plugin_that_failed_to_register_are_not_added(register_plugin, capsys):
    class HalfBroken(CommandPlugin):
        @hookimpl
        def register_models(self, register):
            raise RuntimeError("broken registration")

    register_plugin(HalfBroken(), "half-broken")
    with pytest.raises(SystemExit):
        main(["toy-count", "2"])
    assert "invalid choice: 'toy-count'" in capsys.readouterr().err


# The kernel's verbs, extended by a third-party plugin -------------------------------------------
# A throwaway modality: pipelines that return "words" (a new output field), a writer for it (one
# .txt file, or a folder of them), a shipped model, a train kind and an evaluate kind.
@dataclass
class WordsOutput(PipelineOutput):
    words: list


@dataclass
class TokensOutput(PipelineOutput):
    tokens: list


CALLS: list[dict] = []


class EchoPipeline(DiffusionPipeline):
    """Repeats its prompt with a random number drawn from each sample's generator."""

    def __init__(self, unet):
        self.register_modules(unet=unet)

    def __call__(self, prompt=None, num_samples: int = 1, num_inference_steps: int = 3,
                 generator=None) -> WordsOutput:
        CALLS.append({"prompt": prompt, "num_samples": num_samples,
                      "num_inference_steps": num_inference_steps})
        for _ in self.progress_bar(range(num_inference_steps)):
            pass
        draws = [torch.randint(1000, (1,), generator=g).item() for g in generator]
        return WordsOutput(words=[f"{prompt}-{d}" for d in draws])


class CountPipeline(EchoPipeline):
    """Takes no prompt: ``batch_size`` numbers."""

    def __call__(self, batch_size: int = 1, num_inference_steps: int = 3,
                 generator=None) -> WordsOutput:
        CALLS.append({"batch_size": batch_size, "num_inference_steps": num_inference_steps})
        return WordsOutput(words=[str(torch.randint(1000, (1,), generator=g).item())
                                  for g in generator])


class SilentPipeline(CountPipeline):
    """Returns an output field no plugin writes."""

    def __call__(self, batch_size: int = 1, generator=None) -> TokensOutput:
        CALLS.append({"batch_size": batch_size})
        return TokensOutput(tokens=[])


class WordsWriter(OutputWriter):
    suffixes = (".txt",)
    sample_suffix = ".txt"
    extras = ("all.txt",)
    description = "words"

    def write_file(self, samples, path):
        path.write_text("\n".join(samples) + "\n")

    def write_sample(self, sample, path):
        path.write_text(sample + "\n")

    def write_extras(self, samples, folder):
        self.write_file(samples, folder / "all.txt")


def toy_fit(args):
    print(f"fitted {args.n} times")
    return 0


def toy_score(args):
    print(f"score of {args.model}: 0.5")
    return 0


class WordsPlugin:
    def __init__(self, shipped: str):
        self.shipped = shipped

    @hookimpl
    def register_pipelines(self, register):
        for cls in (EchoPipeline, CountPipeline, SilentPipeline):
            register(cls)

    @hookimpl
    def register_output_writers(self, register):
        register("words", WordsWriter)

    @hookimpl
    def register_shipped_models(self, register):
        register("echo-demo", self.shipped, summary="echoes its prompt", default=True)

    @hookimpl
    def register_train_kinds(self, register):
        register("toy-fit", toy_fit, arguments=lambda p: p.add_argument("--n", type=int,
                                                                         default=1),
                 help="fit the toy")

    @hookimpl
    def register_evaluate_kinds(self, register):
        register("toy-score", toy_score, arguments=lambda p: p.add_argument("model"),
                 help="score a model")


def _save(cls, folder, steps=None):
    from kernel_toys import ToyModel

    pipe = cls(unet=ToyModel())
    pipe.default_num_inference_steps = steps
    pipe.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def words(register_plugin, toys, tmp_path):
    """The words plugin, with an echo folder (shipped, recommending 5 steps), a count folder and
    a folder of a pipeline whose output has no writer."""
    CALLS.clear()
    folders = {"echo": _save(EchoPipeline, tmp_path / "echo", steps=5),
               "count": _save(CountPipeline, tmp_path / "count"),
               "silent": _save(SilentPipeline, tmp_path / "silent")}
    register_plugin(WordsPlugin(folders["echo"]), "aaa-words")  # first by name: its default wins
    return folders


def _generate(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["generate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hook_register_output_writers(words, tmp_path, capsys):
    out = tmp_path / "words.txt"
    code, stdout, err = _generate(capsys, "hello", "--num", "3", "--out", str(out))
    assert code == 0, err
    assert out.read_text().splitlines()[0].startswith("hello-")
    assert len(out.read_text().splitlines()) == 3
    assert stdout.startswith(f"wrote 3 words to {out} in ")


def test_generate_writes_a_folder_of_one_file_per_sample_and_the_extras(words, tmp_path, capsys):
    out = tmp_path / "many"
    assert _generate(capsys, "--prompt", "hi", "--num", "2", "--out", str(out))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.txt", "0001.txt", "all.txt"]
    assert (out / "all.txt").read_text() == (out / "0000.txt").read_text() + \
        (out / "0001.txt").read_text()


def test_hook_register_shipped_models(words, capsys, tmp_path):
    assert _generate(capsys, "--list-models")[1].startswith(
        f"echo-demo (default)  [aaa-words]  echoes its prompt\n    {words['echo']}\n")
    out = tmp_path / "a.txt"
    assert _generate(capsys, "x", "--model", "echo-demo", "--num", "1", "--out", str(out))[0] == 0
    assert _generate(capsys, "x", "--num", "1", "--out", str(out))[0] == 0  # the default model
    assert [c["prompt"] for c in CALLS] == ["x", "x"]


def test_generate_uses_the_folders_recommended_steps_unless_given(words, tmp_path, capsys):
    out = str(tmp_path / "w.txt")
    _, _, err = _generate(capsys, "x", "--num", "1", "--out", out)
    assert "5 steps" in err and "sampling: 100%" in err  # the progress bar is labelled
    _generate(capsys, "x", "--num", "1", "--steps", "2", "--out", out)
    _generate(capsys, "--model", words["count"], "--num", "1", "--out", out)
    assert [c["num_inference_steps"] for c in CALLS] == [5, 2, 3]


def test_sample_i_uses_seed_plus_i_so_it_does_not_depend_on_num(words, tmp_path, capsys):
    for num in ("2", "3"):
        _generate(capsys, "x", "--num", num, "--seed", "7", "--out", str(tmp_path / f"{num}.txt"))
    two, three = ((tmp_path / f"{n}.txt").read_text().splitlines() for n in (2, 3))
    assert three[:2] == two and len(set(three)) == 3
    expected = torch.randint(1000, (1,), generator=torch.Generator().manual_seed(8)).item()
    assert two[1] == f"x-{expected}"


def _fails(capsys, *args) -> str:
    code, out, err = _generate(capsys, *args)
    assert code == 2 and out == "", (code, out, err)
    return err


def test_a_prompt_for_a_pipeline_without_one_fails_before_sampling(words, tmp_path, capsys):
    err = _fails(capsys, "--model", words["count"], "--prompt", "a cat", "--out",
                 str(tmp_path / "x.txt"))
    assert err.startswith("error: CountPipeline takes no input") and "drop the INPUT" in err
    assert CALLS == [] and not (tmp_path / "x.txt").exists()


def test_a_prompt_pipeline_without_a_prompt_fails_before_sampling(words, tmp_path, capsys):
    err = _fails(capsys, "--out", str(tmp_path / "x.txt"))
    assert "EchoPipeline needs an input for its 'prompt' argument" in err
    assert CALLS == []


def test_the_prompt_given_twice_is_refused(words, capsys, tmp_path):
    assert "not both" in _fails(capsys, "a", "--prompt", "b", "--out", str(tmp_path / "x.txt"))


def test_an_out_suffix_the_writer_does_not_write_says_what_it_writes(words, tmp_path, capsys):
    err = _fails(capsys, "x", "--out", str(tmp_path / "x.jpg"))
    assert "written as a .txt file or a folder of .txt files, not as .jpg" in err
    assert CALLS == [] and list(tmp_path.glob("x.jpg*")) == []


def test_an_out_naming_an_existing_file_without_suffix_fails_before_sampling(words, tmp_path,
                                                                               capsys):
    (tmp_path / "notes").write_text("mine")
    err = _fails(capsys, "x", "--out", str(tmp_path / "notes"))
    assert "names an existing file that is not a folder" in err
    assert CALLS == [] and (tmp_path / "notes").read_text() == "mine"


def test_a_folder_with_older_samples_is_refused_unless_overwrite(words, tmp_path, capsys):
    out = tmp_path / "run"
    _generate(capsys, "x", "--num", "3", "--out", str(out))
    (out / "notes.md").write_text("my notes")
    err = _fails(capsys, "x", "--num", "1", "--out", str(out))
    assert "already holds 4 samples (0000.txt, 0001.txt, 0002.txt, ...)" in err
    assert "--overwrite" in err
    assert _generate(capsys, "y", "--num", "1", "--out", str(out), "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.txt", "all.txt", "notes.md"]
    assert (out / "0000.txt").read_text().startswith("y-")


def test_a_pipeline_output_without_a_writer_fails_before_sampling(words, tmp_path, capsys):
    err = _fails(capsys, "--model", words["silent"], "--out", str(tmp_path / "x.txt"))
    assert "SilentPipeline returns ['tokens'], and no installed plugin registered a writer" in err
    assert "'words'" in err and CALLS == []


@pytest.mark.parametrize("option, value", [("--num", "0"), ("--steps", "-1"), ("--num", "two"),
                                           ("--threads", "0")])
def test_bad_counts_are_usage_errors(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", option, value])
    assert exc.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_an_unknown_device_is_refused(words, tmp_path, capsys):
    assert "not a torch device" in _fails(capsys, "x", "--device", "gpu0", "--out",
                                          str(tmp_path / "x.txt"))


def test_generate_leaves_the_callers_torch_thread_count_as_it_was(words, tmp_path, capsys):
    before = torch.get_num_threads()
    _generate(capsys, "x", "--num", "1", "--threads", "3", "--out", str(tmp_path / "x.txt"))
    assert torch.get_num_threads() == before


def test_generate_help_shows_the_real_step_default(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: the count the model folder recommends" in out
    assert "None" not in out


def test_hook_register_train_kinds(words, capsys):
    assert main(["train", "toy-fit", "--n", "4"]) == 0
    assert capsys.readouterr().out == "fitted 4 times\n"


def test_hook_register_evaluate_kinds(words, capsys):
    assert main(["evaluate", "toy-score", "some/model"]) == 0
    assert capsys.readouterr().out == "score of some/model: 0.5\n"


def test_a_verb_without_a_kind_lists_the_kinds(words, capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'train' needs a KIND: one of ") and "toy-fit" in err


def test_kinds_run_lazily_from_module_attr_strings(register_plugin, tmp_path, monkeypatch,
                                                   capsys):
    (tmp_path / "dk_lazy_kind.py").write_text(
        "def add(p):\n    p.add_argument('--x', type=int)\n\n"
        "def run(args):\n    print('ran', args.x, args.threads)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Lazy:
        @hookimpl
        def register_evaluate_kinds(self, register):
            register("lazy", "dk_lazy_kind:run", arguments="dk_lazy_kind:add", help="lazy")

    register_plugin(Lazy(), "lazy")
    assert main(["evaluate", "lazy", "--x", "5", "--threads", "1"]) == 3
    assert capsys.readouterr().out == "ran 5 1\n"


def test_a_plugin_whose_verb_hook_raises_is_skipped(register_plugin, words, capsys):
    class Broken:
        @hookimpl
        def register_train_kinds(self, register):
            raise RuntimeError("no kinds today")

    register_plugin(Broken(), "broken-kinds")
    assert main(["train", "toy-fit"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "fitted 1 times\n"
    assert "plugin 'broken-kinds' failed in register_train_kinds" in captured.err


def test_a_lazy_runner_that_fails_to_import_names_its_plugin(register_plugin, capsys):
    class Ghost:
        @hookimpl
        def register_train_kinds(self, register):
            register("ghost", "no_such_module_xyz:run")

    register_plugin(Ghost(), "ghostly-kinds")
    assert main(["train", "ghost"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'ghostly-kinds' registered 'no_such_module_xyz:run'" in err


# Threads --------------------------------------------------------------------------------------
def test_threads_are_the_idle_cores_unless_asked(monkeypatch):
    from diffusion_kernel import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.2, 0.0, 0.0))  # one core busy
    assert threads.choose_threads() == (1, "1 of 2 cores idle")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert threads.choose_threads() == (2, "2 of 2 cores idle")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 0.0, 0.0))  # never below one
    assert threads.choose_threads()[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads() == (3, "OMP_NUM_THREADS")
    assert threads.choose_threads(4) == (4, "--threads")


def test_importing_the_library_and_loading_a_pipeline_keep_torchs_thread_count(tmp_path):
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(3); import diffusion_kernel; "
            "from diffusion_kernel import registry, DiffusionPipeline; "
            "[reg.names() for reg in registry]; print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "3", out.stderr


# A pipeline folder's recommended step count -----------------------------------------------------
def test_the_recommended_step_count_round_trips_through_model_index(toys, tmp_path):
    from kernel_toys import ToyModel, ToyPipeline, ToyScheduler

    pipe = ToyPipeline(unet=ToyModel(), scheduler=ToyScheduler())
    assert pipe.default_num_inference_steps is None
    assert "_default_num_inference_steps" not in pipe.config
    pipe.default_num_inference_steps = 7
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_default_num_inference_steps"] == 7
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert loaded.default_num_inference_steps == 7
    assert loaded.inference_steps(None, 50) == 7 and loaded.inference_steps(3, 50) == 3


@pytest.mark.parametrize("bad", [0, -2, 2.5, "20", True])
def test_a_bad_recommended_step_count_is_named(toys, tmp_path, bad):
    from diffusion_kernel.errors import PipelineError
    from kernel_toys import ToyModel, ToyPipeline, ToyScheduler

    ToyPipeline(unet=ToyModel(), scheduler=ToyScheduler()).save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index["_default_num_inference_steps"] = bad
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(PipelineError, match="_default_num_inference_steps must be a positive"):
        DiffusionPipeline.from_pretrained(tmp_path / "p")


def test_building_the_command_line_imports_no_torch_and_no_plugin_code():
    import subprocess
    import sys

    code = ("import sys; from diffusion_kernel.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, sorted(m for m in sys.modules "
            "if m.startswith('diffusion_kernel_vision.pipelines')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False []", out.stderr


def test_config_from_args_takes_the_options_named_like_the_fields():
    import argparse
    from typing import ClassVar

    from diffusion_kernel.cli_extensions import config_from_args

    @dataclass
    class Config:
        data: str
        max_steps: int = 10
        MUST_MATCH: ClassVar[tuple[str, ...]] = ("max_steps",)

    args = argparse.Namespace(data="a.npz", max_steps=3, threads=2, func=print)
    assert config_from_args(Config, args) == Config("a.npz", 3)
    assert config_from_args(Config, args, data="b.npz") == Config("b.npz", 3)
    with pytest.raises(TypeError, match="data"):
        config_from_args(Config, argparse.Namespace(max_steps=3))
