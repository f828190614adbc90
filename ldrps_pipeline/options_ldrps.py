"""The speed and memory options of :class:`LDRPSPipeline` (README, "Speed and memory"): ``torch.compile`` of the
networks every step runs, and the advice an out-of-memory error gets. xformers is diffusers' own opt-in switch,
``pipe.enable_xformers_memory_efficient_attention()``: nothing here switches it on.

A mixin of the pipeline, which supplies the components (``vae``, ``unet``, ``aligner``, ``perceptual``),
``_execution_device`` and ``_use_vae_attention`` (the VAE's attention processor, set before compiling).
This module imports no sibling module, so the Hub export can copy it beside the pipeline file.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.utils import logging

logger = logging.get_logger(__name__)


class SpeedAndMemoryOptions:
    """``torch.compile`` and out-of-memory advice for :class:`LDRPSPipeline`."""

    def enable_torch_compile(self, small_networks: bool = False, **compile_options: Any) -> None:
        """Compile the big modules that every step runs with ``torch.compile``: the UNet and the VAE decoder.

        With ``small_networks=True`` also the perceptual features and the alignment networks that each
        image trains (``f`` and the discriminators, through :meth:`AlignmentModule.compile_trainer_networks`).
        They are left eager by default because the restoration was slower with them compiled: on an H200
        (torch 2.11, bf16, 512x512, the paper's settings) 61.2 s per image against 58.2 s, most of it in the
        unguided steps (68.7 against 47.9 ms). Their kernels are small, and a compiled call's host cost
        (guards, the autograd wrapper) outweighs what fusing them saves.

        The modules are compiled in place (:meth:`torch.nn.Module.compile`), so their weights, their
        ``save_pretrained`` and the results stay the same. ``compile_options`` go to ``torch.compile``,
        e.g. ``mode="max-autotune-no-cudagraphs"`` or ``backend``. The first steps pay for the
        compilation, and the decoder compiles once more when its backward first runs below the guidance
        gate. Shapes are static unless ``dynamic`` is given: every new image size or batch compiles
        anew, because inductor 2.13 failed on this pipeline's symbolic shapes (a ``TypeError`` on a
        relational of symbolic sizes) once a second shape made them dynamic. After dynamo's
        ``torch._dynamo.config.recompile_limit`` versions of one function (8 by default; each size,
        batch, grad mode and autocast state is one) further shapes run eagerly, with a warning: raise
        that limit when restoring images of many sizes. The VAE's default attention processors become
        :class:`DecoderAttnProcessor` first; otherwise the processors stay as they are (SDPA by default,
        which inductor compiles, or xformers where you switched it on). CUDA-graph modes
        (``mode="reduce-overhead"``) are the fastest measured: 49.0 s per image on an H200 against 58.2 s
        for the default mode, with a private memory pool and new graphs recorded for every new shape. They
        fail with ``small_networks=True``: the alignment module's compiled output is overwritten by its
        next call before the perceptual features read it (a CUDA-graph replay reuses its output buffers),
        which torch reports as an error.

        A bfloat16 VAE on the CPU keeps its decoder uncompiled, with a warning: there inductor's C++
        backend (torch 2.13) returned an all-zero gradient through the decoder's up-blocks (a resnet
        followed by the nearest-upsampling convolution), which silently switched the guidance off. Its
        fusion pass re-reads a node's dependencies without the renames of a mutated buffer, so the cast
        of the upsampling's scatter-add result runs before the scatter-add (traced in
        ``examples/development/inductor_bf16_grad_repro.py``; CUDA's Triton backend does not take that path). Call
        this after moving the pipeline to the GPU, or compile a float32 pipeline on the CPU.
        """
        self._use_vae_attention()  # before compiling: the processors are traced with the decoder
        compile_options.setdefault("dynamic", False)
        self.unet.compile(**compile_options)
        inductor = compile_options.get("backend", "inductor") == "inductor"
        if inductor and self.vae.dtype == torch.bfloat16 and self.vae.device.type == "cpu":
            logger.warning(
                "enable_torch_compile: the VAE decoder is left uncompiled, because inductor's C++ backend "
                "(torch 2.13) gave all-zero guidance gradients through a bfloat16 decoder on the CPU. Call "
                "enable_torch_compile after moving the pipeline to the GPU, or use float32 on the CPU."
            )
        else:
            self.vae.decoder.compile(**compile_options)
        if small_networks:
            if self.perceptual is not None:
                self.perceptual.compile(**compile_options)
            self.aligner.compile_trainer_networks(**compile_options)

    @contextlib.contextmanager
    def _out_of_memory_advice(
        self, batch_size: int, height: int, width: int, num_samples: int, unet_batch_size: int | None
    ) -> Iterator[None]:
        """Re-raise a device out-of-memory error of the sampling loop with the options, not yet in use, that
        need less memory (the original error is chained, its message kept)."""
        try:
            yield
        except torch.OutOfMemoryError as error:
            options = []
            if not getattr(self.vae, "use_tiling", True):
                options.append("pipe.vae.enable_tiling() (the decoder works in tiles)")
            if not self.vae.is_gradient_checkpointing:
                options.append("pipe.vae.enable_gradient_checkpointing() (the guidance backward keeps less)")
            if self.unet.dtype == torch.float32 and self._execution_device.type == "cuda":
                options.append("pipe.to(torch.bfloat16) (half the weights and activations)")
            if unet_batch_size is None or unet_batch_size > 1:
                options.append("unet_batch_size=1 (one UNet row per call)")
            if num_samples > 1:
                options.append('preset="fast" or a posterior scheduler with num_samples=1 (one sample)')
            if batch_size > 1:
                options.append("fewer images per call")
            advice = "; ".join(options) if options else "a smaller image"
            raise torch.OutOfMemoryError(
                f"LD-RPS ran out of device memory restoring {batch_size} image(s) of {height}x{width}. "
                f"What needs less memory: {advice}.\n{error}"
            ) from error
