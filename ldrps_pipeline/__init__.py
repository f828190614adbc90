"""ldrps-pipeline: LD-RPS zero-shot unified image restoration as a Hugging Face diffusers pipeline.

The modules in this folder are the pipeline's remote-code set: ``pipeline_ldrps.py`` and the
``*_ldrps.py`` modules it imports, which the Hub export copies beside the weights. The subpackages are
tools built on the pipeline's public surface: ``cli`` (the command line), ``hub`` (loading by name,
Hub export), ``evaluation`` (degradations, metrics, baselines, photos, quality benchmark),
``speed_benchmark`` and ``demo_training``. ``demo_model/`` holds the bundled demo model.
"""

from .alignment_ldrps import AlignmentModule, AlignmentTrainer, PatchDiscriminator
from .attention_ldrps import DecoderAttnProcessor
from .guidance_ldrps import NonFiniteSampleError
from .perceptual_ldrps import PerceptualFeatures
from .pipeline_ldrps import LDRPSPipeline, LDRPSPipelineOutput
from .scheduling_ldrps import PRESETS, RecurrentPosteriorScheduler

__all__ = [
    "PRESETS",
    "AlignmentModule",
    "AlignmentTrainer",
    "DecoderAttnProcessor",
    "LDRPSPipeline",
    "LDRPSPipelineOutput",
    "NonFiniteSampleError",
    "PatchDiscriminator",
    "PerceptualFeatures",
    "RecurrentPosteriorScheduler",
]
__version__ = "0.1.0"
