"""A pipeline never loads with a missing part: every component it needs must be named in
``model_index.json`` as a loadable ``[library, class]`` with a folder, or passed by the caller;
only components the pipeline declares optional may be left out."""

import json
import shutil

import pytest
from diffusion_kernel import DiffusionPipeline, PipelineError
from hub_toys import HubToyPipeline, HubToyScheduler, same_weights, toy_model


class OptionalUnetPipeline(HubToyPipeline):
    _optional_components = ("unet",)

    def __init__(self, scheduler: HubToyScheduler, unet=None):
        self.register_modules(unet=unet, scheduler=scheduler)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "pipe"
    HubToyPipeline(unet=toy_model(seed=3), scheduler=HubToyScheduler()).save_pretrained(folder)
    return folder


def _edited(saved, tmp_path, edit=None, remove=None):
    folder = tmp_path / "pipe"
    shutil.copytree(saved, folder)
    index = json.loads((folder / "model_index.json").read_text())
    if edit:
        edit(index)
    (folder / "model_index.json").write_text(json.dumps(index))
    if remove:
        shutil.rmtree(folder / remove)
    return folder


@pytest.mark.parametrize("edit, remove, problem", [
    (lambda i: i.update(unet=[None, None]), None, r"is \[null, null\] \(no component\)"),
    (None, "unet", r"is \['hub_toys', 'HubToyModel'\] but .* has no unet/ folder for it"),
    (lambda i: i.update(unet=["foolib", "NoSuchModel"]), None,
     r"names \['foolib', 'NoSuchModel'\], which cannot be loaded \(.*Did you mean.*\); the "
     r"class comes from library 'foolib': install the diffusion-kernel plugin that registers it"),
    (lambda i: i.update(unet=["diffusers", "NoSuchModel"]), None,
     r"names \['diffusers', 'NoSuchModel'\], which cannot be loaded \(.*plugins`\)"),
    (lambda i: i.update(unet=["diffusers"]), None,
     r"must be \[library, class\], got \[.diffusers.\]"),
])
def test_a_required_component_that_cannot_be_loaded_is_an_error(saved, tmp_path, edit, remove,
                                                                 problem):
    folder = _edited(saved, tmp_path, edit, remove)
    with pytest.raises(PipelineError, match=rf"model_index.json entry 'unet' of .*{problem}; "
                                            rf"HubToyPipeline needs it: fix the entry, or pass "
                                            rf"unet=\.\.\. to from_pretrained"):
        DiffusionPipeline.from_pretrained(folder)


def test_a_component_passed_by_the_caller_needs_no_entry(saved, tmp_path):
    folder = _edited(saved, tmp_path, lambda i: i.update(unet=[None, None]))
    unet = toy_model(seed=9)
    assert DiffusionPipeline.from_pretrained(folder, unet=unet).unet is unet


@pytest.mark.parametrize("library", ["diffusers", "other_library"])
def test_a_registered_class_loads_whatever_library_the_file_names(saved, tmp_path, library):
    folder = _edited(saved, tmp_path, lambda i: i.update(unet=[library, "HubToyModel"]))
    assert same_weights(DiffusionPipeline.from_pretrained(folder).unet, toy_model(seed=3))


def test_an_optional_component_saved_as_none_loads_as_none_quietly(saved, tmp_path, recwarn):
    folder = _edited(saved, tmp_path, lambda i: i.update(unet=[None, None]))
    assert OptionalUnetPipeline.from_pretrained(folder).unet is None
    assert not recwarn.list


def test_an_optional_component_that_cannot_be_loaded_is_left_out_with_a_warning(saved, tmp_path):
    folder = _edited(saved, tmp_path, remove="unet")
    with pytest.warns(UserWarning, match="has no unet/ folder .* OptionalUnetPipeline declares "
                                         "it optional, so it is left out"):
        pipe = OptionalUnetPipeline.from_pretrained(folder)
    assert pipe.unet is None and isinstance(pipe.scheduler, HubToyScheduler)


def test_components_are_checked_before_anything_is_downloaded(hub, saved):
    files = {p.relative_to(saved).as_posix(): p.read_bytes() for p in saved.rglob("*")
             if p.is_file()}
    index = json.loads(files["model_index.json"])
    index["unet"] = ["foolib", "FooUNet"]
    files["model_index.json"] = json.dumps(index).encode()
    hub.commit("tester/pipe", files)
    with pytest.raises(PipelineError, match="install the diffusion-kernel plugin"):
        DiffusionPipeline.from_pretrained("tester/pipe")
    assert hub.downloaded_files("tester/pipe") == {"model_index.json"}
