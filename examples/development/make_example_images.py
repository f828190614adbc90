"""Write the degraded example images of examples/images/ from held-out photos (never seen by the demo model).

Run: python examples/development/make_example_images.py   (needs the `bench` extra: scikit-image, scikit-learn, matplotlib)
"""

from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ldrps_pipeline.evaluation.degradations import get_degradation
from ldrps_pipeline.evaluation.photos import crop_and_resize, load_photo

EXAMPLES = {
    # output name: (photo, degradation)
    "chelsea_lowlight.png": ("chelsea", "lowlight"),
    "coffee_noise.png": ("coffee", "noise"),
    "rocket_haze.png": ("rocket", "haze"),
}


def main() -> None:
    folder = Path(__file__).parents[1] / "images"
    folder.mkdir(exist_ok=True)
    for index, (name, (photo, degradation)) in enumerate(EXAMPLES.items()):
        image = load_photo(photo)
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        clean = torch.from_numpy(crop_and_resize(image, top, left, side, 128)).permute(2, 0, 1)[None]
        degraded = get_degradation(degradation)(clean, generator=index)
        array = (degraded[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        PIL.Image.fromarray(array).save(folder / name)
        print(folder / name)


if __name__ == "__main__":
    main()
