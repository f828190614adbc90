#!/usr/bin/env bash
# The proving ground on a lent H100 / H200 in one call of the device tool (under its 10-minute limit):
# continue training the demo model with the `gpu` preset, then benchmark it at 128 px with two seeds.
#
# Here, before the call (needs the Debian packages lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04
# installed, or extracted with dpkg-deb -x under DEBIAN_ROOT):
#   bash examples/gpu_proving_ground.sh prepare     # runs/debian-photos/ (the 15 photos) and .whl/ (diffusers)
# On the device (carry: .whl runs/debian-photos), from the repository root:
#   bash examples/gpu_proving_ground.sh run [ldrps-train-demo options, e.g. --unet-minutes 4]
#
# `run` writes to $OUT: demo_model/ (the trained pipeline folder with its README and training_log.json),
# train.txt, benchmark.json and benchmark.txt. Copy $OUT/demo_model over ldrps_pipeline/demo_model to land it.
# INIT_FROM (default ldrps_pipeline/demo_model; "none": random weights) is the model it continues from: the
# committed one, so that runs on machines that keep nothing accumulate through the repository. Its networks must be
# those of the options: the bundled model of 2026-11-26 has 4 latent channels, so continue it with
# `run --vae-latent-channels 4` (its missing perceptual features then start from random weights).
# BENCH_ARGS replaces the benchmark's options (default: noise and low light, 128 px, 100 + 1 x 50 steps,
# seeds 0 and 1); BENCH_ARGS=skip leaves the benchmark out.
set -uo pipefail
mode="${1:?usage: gpu_proving_ground.sh prepare | run [ldrps-train-demo options]}"
shift

if [ "$mode" = prepare ]; then
  python3 - "${DEBIAN_ROOT:-/}" <<'PY' || exit 1
import shutil, sys
from pathlib import Path
from ldrps_pipeline.demo_training.training_photos import DEBIAN_PHOTOS
source, target = Path(sys.argv[1]) / "usr/share/backgrounds", Path("runs/debian-photos/usr/share/backgrounds")
target.mkdir(parents=True, exist_ok=True)
for photo in DEBIAN_PHOTOS:
    shutil.copy2(source / photo.path, target / photo.path)
print(f"{len(DEBIAN_PHOTOS)} photos in {target}")
PY
  version=$(python3 -c "import diffusers; print(diffusers.__version__)") || exit 1
  python3 -m pip download -q --no-deps --only-binary :all: -d .whl "diffusers==$version" || exit 1
  du -sh runs/debian-photos .whl
  exit 0
fi
[ "$mode" = run ] || { echo "unknown mode $mode: prepare or run" >&2; exit 2; }

out="${OUT:-/tmp/ldrps-proving-ground}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
init=()
[ "${INIT_FROM:-ldrps_pipeline/demo_model}" = none ] || init=(--init-from "${INIT_FROM:-ldrps_pipeline/demo_model}")
python3 -m ldrps_pipeline.demo_training.command --preset gpu --seed 0 "${init[@]}" \
  --debian-photo-root runs/debian-photos --output "$out/demo_model" --work-dir /tmp/demo-work "$@" 2>&1 | tee "$out/train.txt"
train=${PIPESTATUS[0]}
[ "$train" -eq 0 ] || exit "$train"
cp /tmp/demo-work/training_log.json "$out/demo_model/"
if [ "${BENCH_ARGS:-}" = skip ]; then
  exit 0
fi
read -r -a bench <<< "${BENCH_ARGS:---degradations noise lowlight --size 128 --steps 100 --recurrences 1 --seeds 0 1}"
python3 -m ldrps_pipeline.evaluation.quality_benchmark --model "$out/demo_model" "${bench[@]}" --quiet \
  --json "$out/benchmark.json" 2>&1 | tee "$out/benchmark.txt"
exit "${PIPESTATUS[0]}"
