"""ldrps-pipeline: LD-RPS zero-shot unified image restoration as a Hugging Face diffusers pipeline."""

from .alignment_ldrps import AlignmentModule, AlignmentTrainer, PatchDiscriminator
from .attention_ldrps import DecoderAttnProcessor
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
    "PatchDiscriminator",
    "PerceptualFeatures",
    "RecurrentPosteriorScheduler",
]
__version__ = "0.1.0"
