"""The speed benchmark (`ldrps-speed-benchmark`): seconds per image and peak memory of LD-RPS in several
configurations, side by side.

A tool: it measures the pipeline through its public surface and the profiler ranges it exposes.
"""
