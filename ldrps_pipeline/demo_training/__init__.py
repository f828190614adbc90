"""Demo-model training (`ldrps-train-demo`): the small latent diffusion model shipped in demo_model/.

A tool: nothing here is part of the pipeline.
"""
