"""The command line: `ldrps-restore` (restore.py) and the argument checks every command shares (arguments.py).

`ldrps-restore`'s parts, one job each: inputs.py (files, folders, globs to jobs), image_files.py (any image file
to pixels), image_writing.py (pixels to a PNG / JPEG / WebP / TIFF file), restoration.py (one image through the
pipeline, with the non-finite retry), atomic_files.py (no partial file under a final name), manifest.py (the JSON
Lines record), folder_run.py (the loop, progress and stop signals), processes.py (several processes with
accelerate). A tool: it uses the pipeline only through its public surface.
"""
