"""Quality regression: LD-RPS with the bundled demo model beats the degraded input and the prior alone.

Runs the benchmark's own methods (``ldrps_pipeline.benchmark``) on two small held-out crops
(chelsea and rocket, 32x32), 100 steps + 1 recurrence, seed 0, and compares mean PSNRs.

The thresholds come from runs of this exact configuration with seeds 0, 1 and 2 (2-core CPU, one
torch thread, 2026-11-26); the measured margins (mean over the two crops, per seed) are given
beside each threshold. The held-out coffee crop is left out: there the denoise preset stays
below the noisy input at this size (17.8-18.8 dB against 19.6 dB, seeds 0-2), a weakness of the
small CPU-trained prior that the issue note reports.
"""

import pytest

from ldrps_pipeline.benchmark import BenchmarkConfig, benchmark_crops, degradation_seed, evaluate_method, methods_for
from ldrps_pipeline.degradations import get_degradation

CONFIG = BenchmarkConfig(
    degradations=("noise", "lowlight"), photos=("chelsea", "rocket"), size=32, steps=100, recurrences=1, seeds=(0,)
)
GUIDED = {"noise": "ldrps-denoise", "lowlight": "ldrps-default"}
"""The LD-RPS variant checked per degradation: the one the benchmark shows to help there."""

# Measured gain over the degraded input, seeds 0 / 1 / 2: noise 2.32 / 3.05 / 3.61 dB; lowlight 2.00 / 1.83 / 1.26 dB.
MIN_GAIN_OVER_INPUT = {"noise": 1.0, "lowlight": 0.5}
# Measured gain over guidance off (the prior alone), seeds 0 / 1 / 2: noise 8.1 / 12.1 / 11.8 dB;
# lowlight 0.86 / 2.8 / 1.4 dB (the prior's samples are far from the clean crop, the low-light input is darker still).
MIN_GAIN_OVER_PRIOR = {"noise": 4.0, "lowlight": 0.3}


@pytest.fixture(scope="module")
def pipe():
    from ldrps_pipeline.loading import load_pipeline

    pipe = load_pipeline("demo")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def crops():
    return benchmark_crops(CONFIG)


def mean_psnr(method, crops, degradation):
    scores = []
    for crop in crops:
        degraded = get_degradation(degradation)(crop.image, degradation_seed(degradation, crop.name))
        scores += evaluate_method(method, crop.image, degraded, CONFIG.seeds)
    return sum(score.psnr for score in scores) / len(scores)


@pytest.fixture(scope="module")
def prior_psnr(pipe, crops):
    # Without guidance the restoration does not depend on the input: one run serves both degradations.
    method = {m.name: m for m in methods_for(pipe, "noise", CONFIG)}["ldrps-guidance-off"]
    return mean_psnr(method, crops, "noise")


@pytest.mark.parametrize("degradation", CONFIG.degradations)
def test_ldrps_beats_the_input_and_the_prior_alone(pipe, crops, prior_psnr, degradation):
    methods = {m.name: m for m in methods_for(pipe, degradation, CONFIG)}
    degraded = mean_psnr(methods["input"], crops, degradation)
    guided = mean_psnr(methods[GUIDED[degradation]], crops, degradation)
    assert guided - degraded >= MIN_GAIN_OVER_INPUT[degradation], (guided, degraded)
    assert guided - prior_psnr >= MIN_GAIN_OVER_PRIOR[degradation], (guided, prior_psnr)
