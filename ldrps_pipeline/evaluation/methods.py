"""The restoration methods a quality benchmark compares, and the scoring of one method on one degraded image.

A :class:`Method` restores a degraded ``(1, 3, H, W)`` image; :func:`ldrps_method` makes one from an LD-RPS
pipeline and a posterior scheduler (and optionally a known operator, an oracle); :data:`DEGRADED_INPUT` scores the degraded image itself. :func:`evaluate_method`
runs a method (once per seed if it is stochastic) and scores it against the clean image: PSNR (RGB), SSIM (Y), and
LPIPS when a metric is given.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from ldrps_pipeline.evaluation.lpips_metric import LPIPS
from ldrps_pipeline.evaluation.metrics import psnr, ssim_y
from ldrps_pipeline.evaluation.results import Score
from ldrps_pipeline.operators_ldrps import Operator
from ldrps_pipeline.pipeline_ldrps import LDRPSPipeline
from ldrps_pipeline.scheduling_ldrps import RecurrentPosteriorScheduler


@dataclass(frozen=True)
class Method:
    """A restoration method: ``restore(degraded, seed)`` returns the restored (1, 3, H, W) image.

    LD-RPS methods also take a batch (N, 3, H, W): each image is restored as it would be alone with ``seed``.

    ``stochastic`` methods run once per seed; the others run once, with ``seed=None``.
    ``oracle`` marks a method that is given the true degradation.
    """

    name: str
    restore: Callable[[Tensor, int | None], Tensor]
    stochastic: bool = False
    oracle: bool = False


DEGRADED_INPUT = Method("input", lambda degraded, seed: degraded)
"""The degraded image itself, scored as if it were a restoration: the baseline every method must beat."""


@contextmanager
def swapped_posterior_scheduler(pipe: LDRPSPipeline, posterior: RecurrentPosteriorScheduler) -> Iterator[None]:
    """Use ``posterior`` as the pipeline's posterior scheduler inside the ``with`` block, then restore the original."""
    original = pipe.posterior_scheduler
    pipe.posterior_scheduler = posterior
    try:
        yield
    finally:
        pipe.posterior_scheduler = original


def ldrps_method(
    pipe: LDRPSPipeline,
    name: str,
    posterior: RecurrentPosteriorScheduler,
    steps: int | None,
    recurrences: int | None,
    operator: Operator | None = None,
    empty_prompt: bool = False,
) -> Method:
    """An LD-RPS :class:`Method` that runs ``pipe`` with the posterior scheduler ``posterior``.

    ``steps`` and ``recurrences`` of ``None`` take ``posterior``'s own values. The prompt is ``""`` unless ``pipe``
    has a captioner, which then writes it (where ``posterior`` uses captions); ``empty_prompt`` gives ``""``
    even then (the paper's ablation without the prompt). With a known ``operator`` in place
    of the learned alignment network the method is an oracle (it is given the degradation). ``pipe`` is left as it
    was after every call.
    """

    def restore(degraded: Tensor, seed: int | None) -> Tensor:
        captioned = pipe.captioner is not None and not empty_prompt
        with swapped_posterior_scheduler(pipe, posterior):
            output = pipe(
                degraded,
                prompt=None if captioned else "",
                num_inference_steps=steps,
                recurrences=recurrences,
                operator=operator,
                # One generator per image: each image gets the draws it would get alone with this seed.
                generator=[torch.Generator().manual_seed(seed) for _ in range(degraded.shape[0])],
                output_type="pt",
            )
        return output.images.cpu()

    return Method(name, restore, stochastic=True, oracle=operator is not None)


def evaluate_method(
    method: Method, clean: Tensor, degraded: Tensor, seeds: Sequence[int], lpips: LPIPS | None = None
) -> list[Score]:
    """Restore ``degraded`` with ``method`` (once per seed if it is stochastic) and score it against ``clean``;
    LPIPS only when ``lpips`` is given."""
    scores = []
    for seed in seeds if method.stochastic else [None]:
        start = time.perf_counter()
        restored = method.restore(degraded, seed)
        seconds = time.perf_counter() - start
        scores.append(
            Score(
                seed=seed,
                psnr=float(psnr(restored, clean)[0]),
                ssim_y=float(ssim_y(restored, clean)[0]),
                seconds=seconds,
                lpips=None if lpips is None else float(lpips(restored, clean)[0]),
            )
        )
    return scores


def restorations(methods: Sequence[Method], images: int, seeds: Sequence[int]) -> int:
    """How many restorations ``methods`` make on ``images`` images: the length of a run's progress bar."""
    return images * sum(len(seeds) if method.stochastic else 1 for method in methods)
