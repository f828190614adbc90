"""Demo-model training (`ldrps-train-demo`): the small latent diffusion model shipped in demo_model/.

A tool: nothing here is part of the pipeline. Its modules, by job:

- ``command``: the command line (options, entry point ``main``); its docstring describes the training;
- ``presets``: the presets' sizes and budgets, and the options that define the models;
- ``models``: the four networks built from the options, their size limit and ``--init-from``'s warm start;
- ``byte_tokenizer``: the byte-level CLIP tokenizer (no download);
- ``training_photos``: the training photos, packaged ones and Creative Commons photos of two Debian packages;
- ``data``: augmented crops of the training photos, their captions, banks of pre-encoded latents;
- ``resumable_loop``: the one training loop of every phase, with its budget, schedule, log and checkpoints;
- ``phases``: the VAE, perceptual-feature and UNet + text encoder phases that the loop drives;
- ``vae_evaluation``: the VAE's reconstruction PSNR on held-out photos;
- ``demo_pipeline``: the saved ``LDRPSPipeline`` folder and its README;
- ``training``: the whole run, from the work dir's state to the output;
- ``compute``, ``training_log``, ``atomic_files``: device and precision, ``training_log.json``, atomic writes.
"""
