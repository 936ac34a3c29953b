"""The distributions as a user gets them: wheels built by scripts/build_wheels.py, installed with
pip into a fresh virtual environment, plugins found through their entry points.

How the venv is made (measured on the 2-core CI machine): a truly empty venv that installs
``diffusion-kernel[vision,audio]`` with all its dependencies takes 88 s with a warm pip cache and
124 s with a cold one (torch alone unpacks to ~700 MB), too slow for a suite that must stay well
under 20 minutes. So by default the venv sees the packages of the Python running the tests: a
``.pth`` file in its site-packages lists that Python's site-packages folders (whatever it is: the
system Python, a venv, a venv that itself sees the system's). ``--system-site-packages`` would not
do: a venv made from a venv sees the *base* interpreter's packages, not the outer venv's, and pip
would then install every dependency again. pip resolves ``diffusion-kernel[vision,audio]`` for
real, takes our distributions from the wheel folder into the venv's own site-packages, and
finds the third-party dependencies (torch, transformers, ...) already satisfied. The outer Python
may also have our packages installed editable; the venv's site-packages come first on
``sys.path`` and the plugin manager takes the first distribution of a name, so the venv's copies
are the ones used, which ``test_the_venv_uses_its_own_copies_of_our_distributions`` checks. Set
``DK_PACKAGING_FULL_INSTALL=1`` to install every dependency into an isolated venv instead (the
machine's torch pinned by a constraint either way: any other torch pulls the CUDA packages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow_install

REPO = Path(__file__).resolve().parents[2]
OURS = {
    "diffusion-kernel": REPO / "kernel" / "diffusion_kernel",
    "diffusion-kernel-schedulers": REPO / "plugins/schedulers/diffusion_kernel_schedulers",
    "diffusion-kernel-vision": REPO / "plugins/vision/diffusion_kernel_vision",
    "diffusion-kernel-audio": REPO / "plugins/audio/diffusion_kernel_audio",
    "diffusion-kernel-sequence": REPO / "plugins/sequence/diffusion_kernel_sequence",
    "diffusion-kernel-text2image": REPO / "plugins/text2image/diffusion_kernel_text2image",
    "diffusion-kernel-rl": REPO / "plugins/rl/diffusion_kernel_rl",
    "diffusion-kernel-molecules": REPO / "plugins/molecules/diffusion_kernel_molecules",
}
FULL_INSTALL = os.environ.get("DK_PACKAGING_FULL_INSTALL") == "1"


class Venv:
    def __init__(self, root: Path, workdir: Path):
        self.root = root
        self.workdir = workdir  # cwd of every command: nothing of the checkout on sys.path
        self.python = root / "bin" / "python"
        self.site = Path(self.run("python", "-c", "import sysconfig; "
                                  "print(sysconfig.get_path('purelib'))").stdout.strip())

    def run(self, program: str, *args: str, check: bool = True, **env: str):
        """Run ``program`` (python, pip or diffusion-kernel) from the venv."""
        command = {"python": [str(self.python)], "pip": [str(self.python), "-m", "pip"]}.get(
            program, [str(self.root / "bin" / program)])
        clean = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSION_KERNEL_")
                 and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        result = subprocess.run([*command, *args], cwd=self.workdir, env={**clean, **env},
                                capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"{program} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def python_json(self, code: str, **env: str):
        return json.loads(self.run("python", "-c", textwrap.dedent(code), **env).stdout)

    def pip_install(self, *requirements: str) -> None:
        self.run("pip", "install", "--no-input", "--disable-pip-version-check", *requirements)


def machine_torch() -> str:
    return metadata.version("torch")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_wheels.py"), "--outdir",
                    str(out)], check=True, capture_output=True, text=True, timeout=300)
    return out


def wheel_of(wheelhouse: Path, distribution: str) -> Path:
    (found,) = wheelhouse.glob(f"{distribution.replace('-', '_')}-*.whl")
    return found


def outer_site_packages() -> list[str]:
    """The site-packages folders of the Python running the tests, in its ``sys.path`` order."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")
            and Path(p).is_dir()]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheelhouse) -> Venv:
    root = tmp_path_factory.mktemp("venv")
    flags = [] if FULL_INSTALL else ["--without-pip"]
    subprocess.run([sys.executable, "-m", "venv", *flags, str(root)], check=True, timeout=120)
    if not FULL_INSTALL:  # appended after the venv's own site-packages, so its copies win
        purelib = subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; "
                                  "print(sysconfig.get_path('purelib'))"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        (Path(purelib) / "outer_python.pth").write_text("\n".join(outer_site_packages()) + "\n")
    env = Venv(root, tmp_path_factory.mktemp("cwd"))
    constraints = root / "constraints.txt"
    constraints.write_text(f"torch=={machine_torch()}\n")
    # The extras resolve from the kernel wheel's metadata; naming every one of our wheels makes
    # pip take them from the wheel folder rather than from the index or the machine.
    kernel = wheel_of(wheelhouse, "diffusion-kernel")
    env.pip_install("--find-links", str(wheelhouse), "-c", str(constraints),
                    f"diffusion-kernel[vision,audio] @ {kernel.as_uri()}",
                    *(str(wheel_of(wheelhouse, d)) for d in OURS if d != "diffusion-kernel"))
    return env


def installed(venv: Venv, local: bool) -> dict[str, str]:
    listing = venv.run("pip", "list", "--format=json", *(["--local"] if local else []))
    return {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}


@pytest.fixture(scope="class")
def throwaway_wheels(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("throwaway-wheels")


def build_distribution(out: Path, name: str, version: str, files: dict[str, str],
                       entry_point: str) -> Path:
    """Write a one-package distribution with a ``diffusion_kernel`` entry point and build it."""
    package = name.replace("-", "_")
    source = out / f"{name}-src"
    (source / package).mkdir(parents=True)
    (source / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"
        dependencies = ["diffusion-kernel"]

        [project.entry-points.diffusion_kernel]
        {entry_point} = "{package}.plugin"

        [tool.setuptools]
        packages = ["{package}"]
        """))
    (source / package / "__init__.py").write_text("")
    for filename, code in files.items():
        (source / package / filename).write_text(textwrap.dedent(code))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=120)
    (wheel,) = out.glob(f"{package}-{version}-*.whl")
    return wheel


@pytest.fixture(scope="class")
def installed_distribution(venv):
    """Install a built wheel into the shared venv for one test class; uninstall it afterwards."""
    names = []

    def install(wheel: Path, name: str) -> None:
        # --no-index: its one dependency, diffusion-kernel, must come from the venv already.
        venv.pip_install("--no-index", str(wheel))
        names.append(name)

    yield install
    for name in names:
        venv.run("pip", "uninstall", "--yes", name)


# The wheels ----------------------------------------------------------------------------------
def test_each_wheel_holds_every_module_of_its_source_package(wheelhouse):
    for distribution, package in OURS.items():
        with zipfile.ZipFile(wheel_of(wheelhouse, distribution)) as wheel:
            packed = {n for n in wheel.namelist() if n.endswith(".py")}
        sources = {p.relative_to(package.parent).as_posix() for p in package.rglob("*.py")}
        assert sources - packed == set(), f"{distribution} wheel lacks modules"
        assert packed - sources == set(), f"{distribution} wheel holds modules not in the source"


def test_plugin_wheels_declare_their_entry_point_and_pinned_kernel(wheelhouse):
    for distribution in OURS:
        if distribution == "diffusion-kernel":
            continue
        plugin = distribution.removeprefix("diffusion-kernel-")
        stem = wheel_of(wheelhouse, distribution).name.split("-py3")[0]
        with zipfile.ZipFile(wheel_of(wheelhouse, distribution)) as wheel:
            entry_points = wheel.read(f"{stem}.dist-info/entry_points.txt").decode()
            requires = wheel.read(f"{stem}.dist-info/METADATA").decode()
        assert f"[diffusion_kernel]\n{plugin} = diffusion_kernel_{plugin}.plugin" in entry_points
        assert "Requires-Dist: diffusion-kernel==0.1.0" in requires


def test_kernel_wheel_extras_name_the_plugin_distributions(wheelhouse):
    stem = wheel_of(wheelhouse, "diffusion-kernel").name.split("-py3")[0]
    with zipfile.ZipFile(wheel_of(wheelhouse, "diffusion-kernel")) as wheel:
        requires = wheel.read(f"{stem}.dist-info/METADATA").decode().splitlines()
    for extra in ("schedulers", "vision", "audio", "sequence", "text2image", "rl", "molecules"):
        assert (f'Requires-Dist: diffusion-kernel-{extra}==0.1.0; extra == "{extra}"'
                in requires)
        assert f'Requires-Dist: diffusion-kernel-{extra}==0.1.0; extra == "all"' in requires


# The install ---------------------------------------------------------------------------------
def test_the_venv_uses_its_own_copies_of_our_distributions(venv):
    found = venv.python_json("""
        import importlib, json
        from importlib import metadata
        names = ["diffusion-kernel", "diffusion-kernel-schedulers", "diffusion-kernel-vision",
                 "diffusion-kernel-audio", "diffusion-kernel-sequence",
                 "diffusion-kernel-text2image", "diffusion-kernel-rl",
                 "diffusion-kernel-molecules"]
        dists = {n: str(metadata.distribution(n)._path) for n in names}
        modules = {n: importlib.import_module(n.replace("-", "_")).__file__ for n in names}
        print(json.dumps({"dists": dists, "modules": modules}))
    """)
    for name in OURS:
        assert found["dists"][name].startswith(str(venv.site)), found["dists"][name]
        assert found["modules"][name].startswith(str(venv.site)), found["modules"][name]


def test_the_install_keeps_the_machines_torch_and_pulls_no_cuda_packages(venv):
    everything = installed(venv, local=False)
    assert everything["torch"] == machine_torch()
    assert [n for n in everything if n.startswith("nvidia-") or n == "triton"] == []
    own = installed(venv, local=True)
    assert {n: own[n] for n in OURS} == dict.fromkeys(OURS, "0.1.0")
    if not FULL_INSTALL:  # nothing but ours went into the venv itself
        assert sorted(own) == sorted(OURS)


def test_every_requirement_of_our_distributions_is_satisfied(venv):
    # pip check also judges the machine's own packages (fast mode); only ours are under test.
    report = venv.run("pip", "check", check=False).stdout.splitlines()
    assert [line for line in report if line.lower().startswith("diffusion-kernel")] == []


# Discovery -----------------------------------------------------------------------------------
def test_plugins_command_lists_each_plugin_with_its_distribution_and_version(venv):
    out = venv.run("diffusion-kernel", "plugins").stdout
    for plugin in ("schedulers", "vision", "audio", "sequence", "text2image", "rl", "molecules"):
        assert f"{plugin}: diffusion-kernel-{plugin} 0.1.0 [loaded]" in out.splitlines()


def test_plugins_command_says_what_the_audio_and_sequence_plugins_register(venv):
    lines = venv.run("diffusion-kernel", "plugins").stdout.splitlines()
    audio = lines.index("audio: diffusion-kernel-audio 0.1.0 [loaded]")
    assert lines[audio + 1:audio + 3] == [
        "  pipelines (2): AudioDiffusionPipeline, DanceDiffusionPipeline",
        "  processors (1): Mel"]
    sequence = lines.index("sequence: diffusion-kernel-sequence 0.1.0 [loaded]")
    assert lines[sequence + 1] == "  models (1): UNet1DModel"


def test_registry_command_lists_names_from_the_installed_plugins(venv):
    out = venv.run("diffusion-kernel", "registry").stdout
    assert "  DDIMScheduler  (aliases: ddim)  [schedulers]" in out.splitlines()
    assert "  UNet2DModel  (aliases: unet2d)  [vision]" in out.splitlines()


# A third-party plugin ------------------------------------------------------------------------
SCHEDULER_PLUGIN = """\
    from diffusion_kernel import hookimpl


    @hookimpl
    def register_schedulers(register):
        register("dk_thirdparty_euler.scheduler:MyScheduler", aliases=("my-euler",))
    """
SCHEDULER_MODULE = '''\
    import torch

    from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput


    class MyScheduler(SchedulerMixin):
        """Euler steps of a velocity field on a uniform grid from t=1 down to t=0."""

        def __init__(self, num_train_timesteps: int = 1000):
            self.timesteps = self.num_inference_steps = None

        def set_timesteps(self, num_inference_steps, device=None):
            self.num_inference_steps = num_inference_steps
            self.t = torch.linspace(1.0, 0.0, num_inference_steps + 1, device=device)
            self.timesteps = self.t[:-1] * self.config.num_train_timesteps

        def step(self, model_output, timestep, sample, generator=None):
            self._require_timesteps()
            i = int((self.timesteps == timestep).nonzero()[0])
            dt = self.t[i + 1] - self.t[i]
            return SchedulerOutput(prev_sample=sample + dt * model_output)
    '''


@pytest.fixture(scope="class")
def thirdparty(throwaway_wheels, installed_distribution):
    wheel = build_distribution(throwaway_wheels, "dk-thirdparty-euler", "2.3.0",
                               {"plugin.py": SCHEDULER_PLUGIN, "scheduler.py": SCHEDULER_MODULE},
                               entry_point="thirdparty")
    installed_distribution(wheel, "dk-thirdparty-euler")


@pytest.mark.usefixtures("thirdparty")
class TestAThirdPartySchedulerDistribution:
    def test_is_found_by_name_in_the_registry_and_as_a_kernel_attribute(self, venv):
        found = venv.python_json("""
            import json
            import torch
            from diffusion_kernel import MyScheduler, registry
            from diffusion_kernel.scheduling import SchedulerMixin
            cls = registry.schedulers.get("MyScheduler")
            s = MyScheduler(num_train_timesteps=10)
            s.set_timesteps(4)
            x = torch.ones(2)
            x = s.step(torch.full((2,), 2.0), s.timesteps[0], x).prev_sample
            print(json.dumps({
                "same": cls is MyScheduler and registry.schedulers.get("my-euler") is cls,
                "subclass": issubclass(cls, SchedulerMixin),
                "module": cls.__module__,
                "plugin": registry.schedulers.describe("MyScheduler")["plugin"],
                "timesteps": s.timesteps.tolist(),
                "x": x.tolist(),
            }))
        """)
        assert found["same"] and found["subclass"]
        assert found["module"] == "dk_thirdparty_euler.scheduler"
        assert found["plugin"] == "thirdparty"
        assert found["timesteps"] == [10.0, 7.5, 5.0, 2.5]
        assert found["x"] == [0.5, 0.5]  # x + (t1 - t0) v = 1 + (-0.25)(2)

    def test_is_listed_by_the_registry_command(self, venv):
        out = venv.run("diffusion-kernel", "registry", "schedulers").stdout.splitlines()
        assert "  MyScheduler  (aliases: my-euler)  [thirdparty]" in out
        assert "  DDIMScheduler  (aliases: ddim)  [schedulers]" in out

    def test_is_reported_with_its_distribution_by_the_plugins_command(self, venv):
        lines = venv.run("diffusion-kernel", "plugins").stdout.splitlines()
        at = lines.index("thirdparty: dk-thirdparty-euler 2.3.0 [loaded]")
        assert lines[at + 1] == "  schedulers (1): MyScheduler"


# A broken plugin -----------------------------------------------------------------------------
BROKEN_PLUGIN = """\
    raise RuntimeError("dk-broken-plugin needs a licence server")
    """


@pytest.fixture(scope="class")
def broken(throwaway_wheels, installed_distribution):
    wheel = build_distribution(throwaway_wheels, "dk-broken-plugin", "0.0.1",
                               {"plugin.py": BROKEN_PLUGIN}, entry_point="broken")
    installed_distribution(wheel, "dk-broken-plugin")


@pytest.mark.usefixtures("broken")
class TestAPluginThatRaisesOnImport:
    def test_is_reported_failed_with_its_distribution_and_error(self, venv):
        result = venv.run("diffusion-kernel", "plugins")
        lines = result.stdout.splitlines()
        at = lines.index("broken: dk-broken-plugin 0.0.1 [failed]")
        assert lines[at + 1] == "  error: RuntimeError: dk-broken-plugin needs a licence server"
        assert "plugin 'broken' from dk-broken-plugin failed to load" in result.stderr

    def test_does_not_stop_the_other_plugins(self, venv):
        out = venv.run("diffusion-kernel", "plugins").stdout.splitlines()
        for plugin in ("schedulers", "vision", "audio", "sequence", "text2image", "rl",
                       "molecules"):
            assert f"{plugin}: diffusion-kernel-{plugin} 0.1.0 [loaded]" in out

    def test_leaves_the_registry_working(self, venv):
        out = venv.run("diffusion-kernel", "registry").stdout.splitlines()
        assert "  DDIMScheduler  (aliases: ddim)  [schedulers]" in out
        assert "  UNet2DModel  (aliases: unet2d)  [vision]" in out


# The allowlist -------------------------------------------------------------------------------
def plugin_statuses(venv: Venv, allowlist: str) -> dict[str, str]:
    out = venv.run("diffusion-kernel", "plugins", DIFFUSION_KERNEL_PLUGINS=allowlist).stdout
    return {line.split(":")[0]: line.rsplit("[", 1)[1].rstrip("]")
            for line in out.splitlines() if not line.startswith(" ") and "[" in line}


def test_allowlist_of_plugin_names_loads_only_those(venv):
    assert plugin_statuses(venv, "schedulers,audio") == {
        "schedulers": "loaded", "audio": "loaded", "vision": "disabled", "sequence": "disabled",
        "text2image": "disabled", "rl": "disabled", "molecules": "disabled"}
    out = venv.run("diffusion-kernel", "registry", "models",
                   DIFFUSION_KERNEL_PLUGINS="schedulers,audio").stdout
    assert out.splitlines() == ["models:", "  (none)"]


def test_allowlist_accepts_distribution_names(venv):
    assert plugin_statuses(venv, "diffusion-kernel-vision") == {
        "schedulers": "disabled", "audio": "disabled", "vision": "loaded", "sequence": "disabled",
        "text2image": "disabled", "rl": "disabled", "molecules": "disabled"}


def test_empty_allowlist_loads_no_plugin(venv):
    assert set(plugin_statuses(venv, "").values()) == {"disabled"}
    found = venv.python_json("""
        import json
        from diffusion_kernel import registry
        print(json.dumps([n for reg in registry for n in reg.names()]))
    """, DIFFUSION_KERNEL_PLUGINS="")
    assert found == []
