"""Evaluation: degradations, metrics, classical baselines, the packaged photos and the quality benchmark
(`ldrps-benchmark`).

A tool: it uses the pipeline only through its public surface.
"""
