"""community/lpw_stable_diffusion.py: the weighting syntax, weighted and mean-rescaled
embeddings, prompts longer than the text encoder's window, and equality with the plain
pipeline for an unweighted short prompt."""

import copy
import sys

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def lpw(community):
    return community("lpw_stable_diffusion")


@pytest.fixture(scope="module")
def parse(lpw):
    return sys.modules[type(lpw).__module__].parse_weights


def test_weight_syntax_multiplies_nested_brackets(parse):
    assert parse("a (red:1.5) cat") == [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]
    pieces = dict(parse("x (b) [c] ((d)) ((e) f:2)"))
    assert pieces["b"] == pytest.approx(1.1)
    assert pieces["c"] == pytest.approx(1 / 1.1)
    assert pieces["d"] == pytest.approx(1.21)
    assert pieces["e"] == pytest.approx(2.2)
    assert pieces[" f"] == pytest.approx(2.0)


def test_escaped_brackets_and_plain_colons_are_text(parse):
    assert parse(r"a \(b\) c: d") == [("a (b) c: d", 1.0)]


def test_unweighted_short_prompt_embeds_like_the_plain_pipeline(lpw, plain):
    ours, neg = lpw.encode_prompt("the cat", torch.device("cpu"), 1, True)
    ref, ref_neg = plain.encode_prompt("the cat", torch.device("cpu"), 1, True)
    assert torch.equal(ours, ref) and torch.equal(neg, ref_neg)


def test_unweighted_short_prompt_gives_the_plain_pipelines_image(lpw, plain):
    kwargs = dict(num_inference_steps=3, output_type="np")
    ours = lpw("the cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    ref = plain("the cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(ours, ref)


def test_weight_scales_the_words_tokens_then_restores_the_mean(lpw):
    """On an encoder whose embeddings have a clear mean (as CLIP's have: its final layer norm
    has a bias), the lpw rule: scale the weighted token's row, then rescale to the old mean."""
    cpu = torch.device("cpu")
    pipe = type(lpw)(**{**lpw.components, "text_encoder": copy.deepcopy(lpw.text_encoder)})
    text_model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
    with torch.no_grad():
        text_model.final_layer_norm.bias.fill_(0.3)
    weighted, _ = pipe.encode_prompt("a (cat:1.5)", cpu, 1, False)
    base = pipe._text_embeddings(["a cat"], cpu, pipe.tokenizer.model_max_length)
    assert base.mean() > 0.1  # far from the degenerate case
    # tokens: BOS, a, cat, EOS...: the third row is the weighted word
    scale = torch.ones(1, base.shape[1], 1)
    scale[0, 2] = 1.5
    expected = base * scale * (base.mean() / (base * scale).mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-6, atol=1e-6)
    assert weighted.mean().item() == pytest.approx(base.mean().item(), rel=1e-5)
    assert not torch.allclose(weighted, base, atol=1e-3)


def test_zero_mean_embeddings_keep_their_mean_magnitude_instead(lpw, plain):
    """The tiny encoder's embeddings have mean ~0: dividing by it would blow them up (inf)."""
    cpu = torch.device("cpu")
    base = plain._text_embeddings(["a cat"], cpu, lpw.tokenizer.model_max_length)
    assert abs(base.mean()) < 1e-6
    weighted, _ = lpw.encode_prompt("a (cat:1.5)", cpu, 1, False)
    assert torch.isfinite(weighted).all()
    assert weighted.abs().mean().item() == pytest.approx(base.abs().mean().item(), rel=1e-5)
    assert not torch.allclose(weighted, base, atol=1e-3)


def test_emphasis_and_deemphasis_change_the_image(lpw):
    kwargs = dict(num_inference_steps=2, output_type="np")
    images = [lpw(p, generator=torch.Generator().manual_seed(0), **kwargs).images
              for p in ("the cat", "the (cat:1.8)", "the [cat]")]
    assert np.abs(images[0] - images[1]).max() > 1e-3
    assert np.abs(images[0] - images[2]).max() > 1e-3


def test_prompt_longer_than_77_tokens_is_encoded_window_by_window(lpw):
    cpu = torch.device("cpu")
    length = lpw.tokenizer.model_max_length  # 16 for the tiny CLIP: 14 tokens per window
    words = " ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(90))
    ids, _ = lpw.tokens_and_weights(words)
    assert len(ids) == 90 > 77
    embeds, negative = lpw.encode_prompt(words, cpu, 1, True)
    windows = -(-90 // (length - 2))
    assert embeds.shape[1] == negative.shape[1] == windows * length
    # the last window holds the last words: changing one changes only that window's rows
    changed, _ = lpw.encode_prompt(words[:-1] + "z", cpu, 1, True)
    last = (windows - 1) * length
    assert torch.equal(changed[:, :last], embeds[:, :last])
    assert not torch.allclose(changed[:, last:], embeds[:, last:])


def test_long_prompt_generates_an_image(lpw):
    words = "the cat " * 40
    image = lpw(words, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_long_weighted_prompt_gives_finite_embeddings_and_image(lpw):
    prompt = "the (cat:1.4) on a [blurry] sofa, " + "very detailed, " * 20
    embeds, negative = lpw.encode_prompt(prompt, torch.device("cpu"), 1, True)
    assert torch.isfinite(embeds).all() and torch.isfinite(negative).all()
    image = lpw(prompt, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(image).all()
