"""Models to and from the Hub: loading a pipeline by name (loading.py) and the Hub-ready export (export.py).

A tool: it uses the pipeline only through its public surface.
"""
