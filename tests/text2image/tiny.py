"""Tiny checkpoints of the text2image families, built offline by the reference (diffusers) and
saved into a temporary folder once per test session: T5, CLIP and BERT text encoders from
transformers configs, with tokenizers made from small local vocabularies.

The U-Net configs are the reference's own fast-test configs for DeepFloyd IF and unCLIP (at
smaller sample sizes, to keep the suite fast).
"""

from __future__ import annotations

import functools
import string
import tempfile
from pathlib import Path

import torch
from vision.tiny import single_thread, write_tiny_clip_tokenizer  # noqa: F401

ROOT = Path(tempfile.mkdtemp(prefix="dk-text2image-tiny-"))

IF_STAGE_1 = dict(
    sample_size=16, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    in_channels=3, out_channels=6, cross_attention_dim=32, encoder_hid_dim=32,
    attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
    cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu")
IF_STAGE_2 = dict(
    IF_STAGE_1, sample_size=32, layers_per_block=(1, 2), in_channels=6,
    class_embed_type="timestep", mid_block_scale_factor=1.414, time_embedding_act_fn="gelu",
    time_embedding_dim=32)
UNCLIP_DECODER = dict(
    sample_size=16, in_channels=3, out_channels=6, block_out_channels=(32, 64),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", layers_per_block=1,
    cross_attention_dim=100, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
    class_embed_type="identity")
UNCLIP_SUPER_RES = dict(
    sample_size=32, layers_per_block=1, block_out_channels=(32, 64), in_channels=6,
    out_channels=3, down_block_types=("ResnetDownsampleBlock2D",) * 2,
    up_block_types=("ResnetUpsampleBlock2D",) * 2)
PRIOR = dict(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1,
             num_embeddings=16)
TEXT_PROJ = dict(clip_embeddings_dim=32, time_embed_dim=128, cross_attention_dim=100)
LDM_BERT = dict(vocab_size=34, max_position_embeddings=77, encoder_layers=2, encoder_ffn_dim=37,
                encoder_attention_heads=2, head_dim=8, d_model=32)


# Text encoders and tokenizers ---------------------------------------------------------------
def write_t5_tokenizer(folder: Path) -> Path:
    """A T5 (SentencePiece-style Unigram) tokenizer over single letters, with ``</s>`` after
    each text, built with the tokenizers library and saved the way transformers saves it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(c, -2.0) for c in string.ascii_lowercase]
    pieces += [("\u2581" + c, -1.5) for c in string.ascii_lowercase] + [("\u2581", -3.0)]
    model = Tokenizer(models.Unigram(pieces, unk_id=2))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="</s>",
                                unk_token="<unk>", extra_ids=0, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def t5_tokenizer():
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(write_t5_tokenizer(ROOT / "t5-tokenizer"))


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=56, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8)).eval()


def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(ROOT / "clip-tokenizer"))


def clip_encoder_with_projection():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=58, hidden_size=32, projection_dim=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
        bos_token_id=56, eos_token_id=57, pad_token_id=57)).eval()


def bert_tokenizer():
    from transformers import BertTokenizer

    folder = ROOT / "bert-tokenizer"
    folder.mkdir(exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
             "cat", "the", "dog"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(folder / "vocab.txt"))


# Reference models ---------------------------------------------------------------------------
def reference_unet(config: dict, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**config).eval()


def reference_unet_2d(config: dict, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**config).eval()


def randomised(model, std: float = 0.3):
    """Every parameter drawn from N(0, std^2): the reference initialises some to zeros (the
    prior's position embeddings, the text projection's guidance embedding), which would hide
    mistakes in how they are used."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def if_scheduler(**overrides):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{**dict(beta_schedule="squaredcos_cap_v2", thresholding=True,
                                   dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
                                   variance_type="learned_range"), **overrides})


# Pipeline folders ---------------------------------------------------------------------------
@functools.cache
def if_stage_1_folder() -> Path:
    from diffusers import IFPipeline
    from diffusers.pipelines.deepfloyd_if import IFWatermarker

    IFPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_encoder(),
               unet=reference_unet(IF_STAGE_1), scheduler=if_scheduler(), safety_checker=None,
               feature_extractor=None, watermarker=IFWatermarker(),
               requires_safety_checker=False).save_pretrained(ROOT / "if-1")
    return ROOT / "if-1"


@functools.cache
def if_stage_2_folder() -> Path:
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline

    IFSuperResolutionPipeline(
        tokenizer=t5_tokenizer(), text_encoder=t5_encoder(), unet=reference_unet(IF_STAGE_2),
        scheduler=if_scheduler(), image_noising_scheduler=DDPMScheduler(
            beta_schedule="squaredcos_cap_v2"),
        safety_checker=None, feature_extractor=None, watermarker=None,
        requires_safety_checker=False).save_pretrained(ROOT / "if-2")
    return ROOT / "if-2"


def unclip_components() -> dict:
    """The reference's unCLIP components (diffusers 0.42.1 cannot reload its own unCLIP folders:
    its model_index names ``UnCLIPTextProjModel`` under a library it does not resolve, so the
    reference pipeline is built from these)."""
    from diffusers import PriorTransformer, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(0)
    prior = randomised(PriorTransformer(**PRIOR)).eval()
    text_proj = randomised(UnCLIPTextProjModel(**TEXT_PROJ), std=0.1).eval()
    return dict(
        prior=prior, decoder=reference_unet(UNCLIP_DECODER), text_proj=text_proj,
        text_encoder=clip_encoder_with_projection(), tokenizer=clip_tokenizer(),
        super_res_first=reference_unet_2d(UNCLIP_SUPER_RES, 0),
        super_res_last=reference_unet_2d(UNCLIP_SUPER_RES, 1),
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log",
                                        prediction_type="sample", clip_sample_range=5.0),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range",
                                          prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log",
                                            prediction_type="epsilon"))


@functools.cache
def unclip_folder() -> Path:
    from diffusers import UnCLIPPipeline

    UnCLIPPipeline(**unclip_components()).save_pretrained(ROOT / "unclip")
    return ROOT / "unclip"


@functools.cache
def ldm_text2img_folder() -> Path:
    """LDMBert + BERT tokenizer, a conditional U-Net on 4 x 8 x 8 latents, a KL autoencoder of
    factor 2 and DDIM: 64 x 64 asked gives 16 x 16 images (the format's hard-coded factor 8)."""
    from diffusers import AutoencoderKL, DDIMScheduler, LDMTextToImagePipeline
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )

    torch.manual_seed(0)
    bert = LDMBertModel(LDMBertConfig(**LDM_BERT)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                        norm_num_groups=8).eval()
    unet = reference_unet(dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, norm_num_groups=8, down_block_types=("DownBlock2D",
                                                             "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8))
    # The released model's scheduler (CompVis/ldm-text2im-large-256)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    LDMTextToImagePipeline(vqvae=vae, bert=bert, tokenizer=bert_tokenizer(), unet=unet,
                           scheduler=scheduler).save_pretrained(ROOT / "ldm-text2img")
    return ROOT / "ldm-text2img"


def seeded(*seeds: int):
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return generators[0] if len(generators) == 1 else generators
