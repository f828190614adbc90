"""The command line: `ldrps-restore` (restore.py) and the argument checks every command shares (arguments.py).

A tool: it uses the pipeline only through its public surface.
"""
