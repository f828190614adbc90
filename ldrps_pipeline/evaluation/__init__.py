"""Evaluation: degradations, metrics (LPIPS through ``lpips`` or ``pyiqa`` when installed), classical baselines, the
packaged photos and the quality benchmark (`ldrps-benchmark`): its methods and results, the run on held-out crops
(``quality_benchmark``, also the command) and the run on your own image pairs (``paired_images``).

A tool: it uses the pipeline only through its public surface.
"""
