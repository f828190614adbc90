"""Tiny pipeline components built from configs, offline (no weights, no downloads), for the tests; a seeded
restoration with them; and a recorder of the UNet batch sizes a pipeline runs."""

import torch
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ldrps_pipeline import AlignmentModule, LDRPSPipeline, PerceptualFeatures, RecurrentPosteriorScheduler
from ldrps_pipeline.demo_training.byte_tokenizer import byte_level_clip_tokenizer
from ldrps_pipeline.scheduling_ldrps import STABLE_DIFFUSION_DDIM_CONFIG

TEXT_HIDDEN = 16


STABLE_DIFFUSION_FAMILIES = {
    # SD 1.x: attention_head_dim is the number of heads, conv projections in the transformers, PNDM shipped.
    "sd1": {"unet": {"attention_head_dim": 4}, "scheduler": (PNDMScheduler, {"skip_prk_steps": True})},
    # SD 2.x-base: head widths per block, linear projections, epsilon prediction, PNDM shipped.
    "sd2-base": {
        "unet": {"attention_head_dim": (2, 4), "use_linear_projection": True},
        "scheduler": (PNDMScheduler, {"skip_prk_steps": True}),
    },
    # SD 2.x 768: as 2.x-base, with upcast attention and v-prediction, DDIM shipped.
    "sd2-768": {
        "unet": {"attention_head_dim": (2, 4), "use_linear_projection": True, "upcast_attention": True},
        "scheduler": (DDIMScheduler, {"prediction_type": "v_prediction"}),
    },
}
"""The UNet and scheduler settings that tell the Stable Diffusion families apart, at tiny sizes."""


def tiny_stable_diffusion(family: str, seed: int = 0) -> StableDiffusionPipeline:
    """A tiny text-to-image Stable Diffusion pipeline of ``family`` (a key of :data:`STABLE_DIFFUSION_FAMILIES`),
    without safety checker: what a user's SD repository holds, at test size."""
    settings = STABLE_DIFFUSION_FAMILIES[family]
    components = tiny_components(seed, unet_overrides=settings["unet"])
    scheduler_class, scheduler_overrides = settings["scheduler"]
    scheduler = scheduler_class.from_config({**STABLE_DIFFUSION_DDIM_CONFIG, **scheduler_overrides})
    return StableDiffusionPipeline(
        **{name: components[name] for name in ("vae", "text_encoder", "tokenizer", "unet")},
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_components(seed: int = 0, perceptual: bool = True, unet_overrides: dict | None = None) -> dict:
    """The components of a tiny LDRPSPipeline: VAE factor 2, UNet with one downsampling, 16-wide text encoder."""
    torch.manual_seed(seed)
    unet_config = {"attention_head_dim": 4, **(unet_overrides or {})}
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=4,
        **unet_config,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=32,
            layer_norm_eps=1e-05,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=514,
            max_position_embeddings=77,
        )
    ).eval()
    scheduler = DDIMScheduler(**STABLE_DIFFUSION_DDIM_CONFIG)
    return {
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": byte_level_clip_tokenizer(),
        "unet": unet.eval(),
        "scheduler": scheduler,
        "aligner": AlignmentModule(hidden_channels=(8, 8, 8)),
        # No warm-up of f (100 steps by default) in the tiny tests' few steps, which it would slow fourfold; the
        # warm-up's own tests set it.
        "posterior_scheduler": RecurrentPosteriorScheduler(aligner_warmup_steps=0),
        "captioner": None,
        "captioner_processor": None,
        "perceptual": PerceptualFeatures(channels=(4, 8)).eval() if perceptual else None,
    }


def tiny_pipeline(seed: int = 0, **overrides) -> LDRPSPipeline:
    """A tiny LDRPSPipeline on CPU, progress bar off."""
    pipe = LDRPSPipeline(**{**tiny_components(seed), **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def restore_tiny(pipe: LDRPSPipeline, image: torch.Tensor, **kwargs) -> torch.Tensor:
    """``pipe``'s restoration of ``image`` as a tensor: prompt "a photo", seed 0, 10 steps unless given."""
    generator = torch.Generator().manual_seed(0)
    kwargs.setdefault("num_inference_steps", 10)
    return pipe(image, prompt="a photo", generator=generator, output_type="pt", **kwargs).images


def tiny_image(height: int = 16, width: int = 16, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A smooth random RGB image batch (B, 3, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def tiny_captioner(directory: str, word: str = "cat") -> tuple:
    """A tiny random BLIP captioner and processor that always say ``word`` (its logit is raised)."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "dog", "on", "grass"]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "bos_token_id": 2,
            "sep_token_id": 3,
            "pad_token_id": 0,
            "max_position_embeddings": 64,
        },
        vision_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[vocab.index(word)] += 50.0
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    return model, processor


def record_unet_batches(pipe: LDRPSPipeline, monkeypatch) -> list[int]:
    """The batch size of every UNet call ``pipe`` makes from now on (the list fills as it runs)."""
    batches = []
    forward = pipe.unet.forward

    def recording_forward(sample, *args, **kwargs):
        batches.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", recording_forward)
    return batches
