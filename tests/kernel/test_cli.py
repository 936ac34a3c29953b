"""The ``diffusion-kernel`` command line, run in-process through ``cli.main``."""

from __future__ import annotations

import json

import pytest
from diffusion_kernel import hookimpl
from diffusion_kernel.cli import main


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


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: diffusion-kernel" in capsys.readouterr().out


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
