"""Quality regression: LD-RPS with the bundled demo model beats the degraded input and the prior alone.

Runs the benchmark's own methods (``ldrps_pipeline.evaluation.quality_benchmark``) on the three held-out crops
(chelsea, coffee, rocket; 32x32, as one batch: each crop is restored as it would be alone), 50 steps + 1 recurrence
(25 steps; the benchmark's 100 + 1 x 50 took 300 s of the suite's 10-minute budget, these about half),
and compares mean PSNRs over the crops: LD-RPS with seed 0 against the degraded input, and against the prior
alone (guidance off) averaged over seeds 0, 1 and 2. An unguided sample does not look at the input, so its PSNR
is a random draw; its mean over seeds is the stable thing to beat.

MEASURED holds the gains of seeds 0-4 with the demo model of THRESHOLDS_MEASURED_ON (2-core CPU), from
``gains`` below, the test's own code. Each threshold is the mean measured gain minus twice the standard
deviation over those seeds, rounded down to 0.1 dB, and never below 0 (the guided result must beat what it is
compared with): a run of seed 0 below it is further from the measurements than the seed-to-seed spread explains.
"""

import math
import statistics

import pytest
import torch

from ldrps_pipeline.evaluation.degradations import get_degradation
from ldrps_pipeline.evaluation.metrics import psnr
from ldrps_pipeline.evaluation.quality_benchmark import BenchmarkConfig, benchmark_crops, degradation_seed, methods_for

CONFIG = BenchmarkConfig(
    degradations=("noise", "lowlight"),
    photos=("chelsea", "coffee", "rocket"),
    size=32,
    steps=50,
    recurrences=1,
    seeds=(0,),
)
PRIOR_SEEDS = (0, 1, 2)
GUIDED = {"noise": "ldrps-denoise", "lowlight": "ldrps-default"}
"""The LD-RPS variant checked per degradation: the one the benchmark shows to help there."""

THRESHOLDS_MEASURED_ON = (
    "2026-12-03 at 50 + 1 x 25 steps, with the demo model of 2026-11-26 and its perceptual component of 2026-12-03 "
    "(prior mean 10.66 dB); "
    "low light with the default of 2026-12-03 (f loss weights [3.0, 0.0, 0.01], guidance perceptual weight 2e-3, "
    "the exposure term 1.0 on the image's mean with tolerance 0.2 at every guided step), both variants with f's "
    "warm-up of 100 steps (aligner_warmup_steps)"
)
MEASURED = {
    # degradation: (gains over the input, gains over the prior's mean over PRIOR_SEEDS), seeds 0-4, dB
    "noise": ([1.43, 2.19, 2.48, 1.96, 2.01], [9.85, 10.61, 10.89, 10.37, 10.42]),  # means 2.01 / 10.43, std 0.38
    "lowlight": ([2.45, 2.97, 2.98, 2.37, 2.69], [2.01, 2.52, 2.54, 1.93, 2.25]),  # means 2.69 / 2.25, std 0.28
}
MIN_GAIN_OVER_INPUT = {"noise": 1.2, "lowlight": 2.1}
MIN_GAIN_OVER_PRIOR = {"noise": 9.6, "lowlight": 1.6}
"""At 100 + 1 x 50 steps (the benchmark's, until
2026-12-03) the gains over the input were 3.51 +- 0.21 (noise) and 2.75 +- 0.60 (low light). Before the default's
exposure term (the reference's late terms, 1e-3 for t < 100), low light gained only
0.41 +- 0.21 dB over the input and tied with the prior's mean (+0.12 +- 0.21), so it was checked against the input
alone, at threshold 0. Without the warm-up (2026-12-02) the gains were 3.12 +- 0.41 (noise) and 0.28 +- 0.12 dB
(low light) over the input; with the perceptual component and the earlier default's perceptual term in f's training
(f [3.0, 0.1, 0.01], 2026-12-03) low light gained only 0.06 +- 0.12 dB (seed 0: -0.01)."""


def threshold(gains: list[float]) -> float:
    """The mean gain minus twice its standard deviation over seeds, rounded down to 0.1 dB, at least 0."""
    return max(0.0, math.floor(10 * (statistics.mean(gains) - 2 * statistics.stdev(gains))) / 10)


@pytest.fixture(scope="module", autouse=True)
def two_threads(cores_per_process):
    """The guided restorations here are the suite's heaviest (70-78 s each on one thread beside another process,
    2026-12-03): two torch threads, where this process has two cores to itself, take about a quarter off; the test-wide
    single thread is put back after them. MEASURED was measured on one thread: two sum in another order, some 1e-4 dB
    apart."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, cores_per_process))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    from ldrps_pipeline.hub.loading import load_pipeline

    pipe = load_pipeline("demo")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def crops():
    return benchmark_crops(CONFIG)


def mean_psnr(method, clean: torch.Tensor, degraded: torch.Tensor, seeds) -> float:
    """Mean PSNR over the crops (a batch) and ``seeds``."""
    return float(torch.cat([psnr(method.restore(degraded, seed), clean) for seed in seeds]).mean())


def batches(crops, degradation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, degraded) batches of the crops, degraded as the benchmark degrades them."""
    clean = torch.cat([crop.image for crop in crops])
    degraded = torch.cat([get_degradation(degradation)(c.image, degradation_seed(degradation, c.name)) for c in crops])
    return clean, degraded


def prior_mean_psnr(pipe, crops) -> float:
    # Without guidance (and without a captioner) the restoration does not depend on the input: one
    # set of runs serves both degradations.
    method = {m.name: m for m in methods_for(pipe, "noise", CONFIG)}["ldrps-guidance-off"]
    clean, degraded = batches(crops, "noise")
    return mean_psnr(method, clean, degraded, PRIOR_SEEDS)


def gains(pipe, crops, degradation: str, seed: int, prior: float) -> tuple[float, float]:
    """(gain over the degraded input, gain over ``prior``) of the checked variant with ``seed``, in dB."""
    methods = {m.name: m for m in methods_for(pipe, degradation, CONFIG)}
    clean, degraded = batches(crops, degradation)
    guided = mean_psnr(methods[GUIDED[degradation]], clean, degraded, [seed])
    return guided - float(psnr(degraded, clean).mean()), guided - prior


@pytest.fixture(scope="module")
def prior_psnr(pipe, crops):
    return prior_mean_psnr(pipe, crops)


def test_thresholds_follow_from_the_measurements():
    for degradation, (over_input, over_prior) in MEASURED.items():
        assert MIN_GAIN_OVER_INPUT[degradation] == threshold(over_input)
        if degradation in MIN_GAIN_OVER_PRIOR:
            assert MIN_GAIN_OVER_PRIOR[degradation] == threshold(over_prior)
        else:  # left unchecked only where the measurements do not show a gain
            assert statistics.mean(over_prior) - 2 * statistics.stdev(over_prior) < 0
    assert set(MEASURED) == set(CONFIG.degradations)


@pytest.mark.parametrize("degradation", CONFIG.degradations)
def test_ldrps_beats_the_input_and_the_prior_alone(pipe, crops, prior_psnr, degradation):
    over_input, over_prior = gains(pipe, crops, degradation, CONFIG.seeds[0], prior_psnr)
    assert over_input >= MIN_GAIN_OVER_INPUT[degradation] and over_input > 0, over_input
    if degradation in MIN_GAIN_OVER_PRIOR:
        assert over_prior >= MIN_GAIN_OVER_PRIOR[degradation] and over_prior > 0, over_prior
