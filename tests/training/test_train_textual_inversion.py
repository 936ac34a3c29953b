"""`diffusion-kernel train textual-inversion` on the tiny Stable Diffusion: only the new rows
change, the embedding file and the full pipeline give diffusers' image, the held-out loss of the
new token drops, and bad tokens are refused before any step."""

import numpy as np
import pytest
import torch
from finetune_helpers import (
    ROOT,
    data_latents,
    held_out_loss,
    image,
    image_data,
    load_ours,
    load_reference,
    single_thread,  # noqa: F401
    tiny_sd,
    train_cli,
)
from safetensors.torch import load_file

PROMPT = "a photo of a <tok>"


@pytest.fixture(scope="module")
def data():
    return image_data(ROOT / "ti-data")


@pytest.fixture(scope="module")
def run(data):
    from diffusion_kernel_vision.training.textual_inversion import (
        TextualInversionConfig,
        TextualInversionTrainer,
    )

    cfg = TextualInversionConfig(model=str(tiny_sd()), data=str(data),
                                 output_dir=str(ROOT / "ti"), placeholder_token="<tok>",
                                 initializer_token="cat", num_vectors=2, max_steps=40,
                                 train_batch_size=2, learning_rate=5e-2, seed=1,
                                 checkpointing_steps=0, save_as_full_pipeline=True)
    trainer = TextualInversionTrainer(cfg)
    trainer.run()
    return trainer


def test_only_the_placeholder_rows_differ_from_the_base_embeddings(run):
    base = load_ours(tiny_sd())
    full = load_ours(run.output)
    table = full.text_encoder.get_input_embeddings().weight
    base_table = base.text_encoder.get_input_embeddings().weight
    rows = len(base_table)
    assert table.shape == (rows + 2, base_table.shape[1])
    assert torch.equal(table[:rows], base_table)
    ids = full.tokenizer.convert_tokens_to_ids(["<tok>", "<tok>_1"])
    assert ids == [rows, rows + 1]
    cat = base_table[base.tokenizer.encode("cat", add_special_tokens=False)[0]]
    assert (table[rows:] - cat).abs().amax(dim=1).min() > 1e-2  # both rows moved
    learned = load_file(run.output / "learned_embeds.safetensors")
    assert list(learned) == ["<tok>"] and torch.equal(learned["<tok>"], table[rows:])
    for name in ("unet", "vae"):
        want = getattr(base, name).state_dict()
        got = getattr(full, name).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    want = {k: v for k, v in base.text_encoder.state_dict().items() if "token_embedding" not in k}
    got = full.text_encoder.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_the_embedding_file_gives_the_same_image_here_and_in_diffusers(run):
    ours, reference = load_ours(tiny_sd()), load_reference(tiny_sd())
    ours.load_textual_inversion(run.output)
    reference.load_textual_inversion(run.output)
    a, b = image(ours, PROMPT), image(reference, PROMPT)
    assert np.abs(a - b).max() < 1e-4
    full = image(load_reference(run.output), PROMPT)  # the saved whole pipeline, in diffusers
    assert np.abs(a - full).max() < 1e-4
    assert np.abs(a - image(ours, "a photo of a cat cat")).max() > 1e-3


def test_textual_inversion_lowers_the_held_out_loss_of_its_prompt(run, data):
    # Measured: 1.1124 -> 1.1112. The tiny U-Net is random, so text moves its predictions only a
    # little (another prompt changes generated latents by 0.22 RMS of 8.6); the new rows are
    # all that trains, and the drop is deterministic, far above float noise (1e-6).
    base = load_ours(tiny_sd())
    latents = data_latents(base, data)
    before = held_out_loss(base, latents, "a photo of a cat cat")  # the initial embedding
    after = held_out_loss(load_ours(run.output), latents, "a photo of a <tok> <tok>_1")
    assert after < before - 4e-4, (before, after)


def _fails(capsys, *args) -> str:
    capsys.readouterr()
    assert train_cli("textual-inversion", *args) == 2
    return capsys.readouterr().err


def test_a_token_already_in_the_vocabulary_is_refused_before_training(run, data, tmp_path,
                                                                      capsys):
    from diffusion_kernel.cli import main

    out = tmp_path / "o"
    args = ["--data", str(data), "--output-dir", str(out), "--initializer-token", "cat"]
    capsys.readouterr()
    assert main(["train", "textual-inversion", "--model", str(run.output), *args,
                 "--placeholder-token", "<tok>"]) == 2  # the saved pipeline knows <tok>
    assert "'<tok>' is already in the tokenizer's vocabulary" in capsys.readouterr().err
    err = _fails(capsys, *args, "--placeholder-token", "cat")
    assert "already a word" in err and "cat</w>" in err
    err = _fails(capsys, *args[:-1], "dog", "--placeholder-token", "<new>")
    assert "'dog' is 3 tokens" in err
    err = _fails(capsys, *args, "--placeholder-token", "<new>", "--validation-prompt", "a dog")
    assert "does not use <new>" in err
    assert not out.exists()
