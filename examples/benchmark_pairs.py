"""Benchmark LD-RPS on your own degraded / clean pairs from Python: several presets on the same pairs, one model load.

    python examples/benchmark_pairs.py pairs/noise pairs/clean --presets default denoise --steps 50 --recurrences 1

The pairs are the images of DEGRADED_DIR and CLEAN_DIR with the same file stem (``examples/degrade_folder.py`` makes
them from a folder of clean photos). Each preset is scored with ``run_pairs_benchmark`` (PSNR on RGB, SSIM on Y, and
LPIPS where ``lpips`` or ``pyiqa`` is installed) on the pairs read once, with one pipeline; the script prints each
table and then every preset's mean PSNR gain over the degraded input. ``ldrps-benchmark --pairs`` does one preset
from the command line.
"""

import argparse
from pathlib import Path

from ldrps_pipeline import PRESETS, LDRPSPipeline
from ldrps_pipeline.evaluation.methods import DEGRADED_INPUT
from ldrps_pipeline.evaluation.paired_images import PairsConfig, PairSet, read_pairs, run_pairs_benchmark
from ldrps_pipeline.evaluation.results import format_table
from ldrps_pipeline.hub.loading import load_pipeline, resolve_device


def compare_presets(pipe: LDRPSPipeline, pairs: PairSet, configs: list[PairsConfig]) -> dict[str, tuple[float, float]]:
    """Score every config's preset on ``pairs``; print each table; return ``{preset: (input PSNR, LD-RPS PSNR)}``."""
    gains = {}
    for config in configs:
        results = run_pairs_benchmark(config, pipe, pair_set=pairs, progress=False)
        print(format_table(results))
        rows = {row.method: row.psnr_mean for row in results.summary()}
        gains[config.preset] = (rows[DEGRADED_INPUT.name], rows[f"ldrps-{config.preset}"])
    return gains


def main(argv: list[str] | None = None) -> int:
    """Read the pairs, load the model once, score each preset, print the gains."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("degraded_dir", type=Path, help="the degraded images")
    parser.add_argument("clean_dir", type=Path, help="their clean references, with the same file stems")
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["default"], help="default: default")
    parser.add_argument("--model", default="demo", help="'demo', a folder or a Hub id (default: demo)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps of pass 0 (default: each preset's)")
    parser.add_argument("--recurrences", type=int, default=None, help="passes after pass 0 (default: each preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="LD-RPS seeds (default: 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    try:
        configs = [
            PairsConfig(
                str(args.degraded_dir),
                str(args.clean_dir),
                model=args.model,
                preset=preset,
                steps=args.steps,
                recurrences=args.recurrences,
                seeds=tuple(args.seeds),
            )
            for preset in args.presets
        ]
        pairs = read_pairs(configs[0])  # checked before the model loads
    except (ValueError, OSError) as error:
        parser.error(str(error))
    pipe = load_pipeline(args.model).to(resolve_device(args.device))
    pipe.set_progress_bar_config(disable=True)
    for preset, (degraded, restored) in compare_presets(pipe, pairs, configs).items():
        print(f"{preset}: {degraded:.2f} dB -> {restored:.2f} dB ({restored - degraded:+.2f} dB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
