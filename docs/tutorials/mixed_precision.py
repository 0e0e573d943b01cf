"""Tutorial: models in float16 / bfloat16, converted or under torch.autocast.

camlib runs the model in the precision you chose and computes the maps in
float32:

* a converted model (``model.half()``, ``model.to(torch.bfloat16)``) gets the
  input cast to its dtype, so a float32 batch can be passed as it is;
* under ``torch.autocast`` the model's layers run in reduced precision as usual;
* the captured activations and gradients are upcast to float32 before any CAM
  arithmetic; the principal components (EigenCAM, ``eigen_smooth``, KPCA-CAM)
  are computed in float32 with autocast switched off (pytorch-grad-cam's numpy
  SVD rejects float16), and the maps come back as float32 numpy arrays.

bfloat16 is the reduced precision CPUs run well; on a GPU, float16 and autocast
are the common choices (run this script on a CUDA machine to include them).

Run it::

    python docs/tutorials/mixed_precision.py --out precision_maps
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from camlib import KPCA_CAM, AblationCAM, EigenCAM, GradCAM, ScoreCAM
from camlib.demo import load_sample_image
from camlib.models import IMAGENET_MEAN, IMAGENET_STD, resize_image
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray) -> None:
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_precision_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    rgb = resize_image(load_sample_image(), 96)
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD)  # float32
    targets = [ClassifierOutputTarget(3)]
    layers = [model.layer4[-1]]
    full = GradCAM(model, layers)(x, targets)

    # -- 1. A bfloat16 copy of the model. The float32 input is cast to bfloat16 by camlib.
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    for cls in (GradCAM, EigenCAM, KPCA_CAM, ScoreCAM, AblationCAM):
        maps = cls(bf16, [bf16.layer4[-1]])(x, targets)
        print(f"bfloat16 {cls.__name__:11s}: {maps.dtype}, max {maps.max():.2f}")
        save(out / f"bfloat16_{cls.__name__.lower()}.png", rgb, maps[0])
    maps = GradCAM(bf16, [bf16.layer4[-1]])(x, targets)
    print(f"bfloat16 vs float32 GradCAM: largest difference {np.abs(maps - full).max():.3f}")

    # -- 2. The float32 model under autocast: the same call, inside the context.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = GradCAM(model, layers)(x, targets, eigen_smooth=True)  # eigen_smooth: SVD in float32
    save(out / "autocast_bfloat16_gradcam_eigen_smooth.png", rgb, maps[0])

    # -- 3. On a GPU: float16 models and float16 autocast (skipped without CUDA).
    if torch.cuda.is_available():
        half = copy.deepcopy(model).cuda().half()
        save(out / "cuda_float16_gradcam.png", rgb, GradCAM(half, [half.layer4[-1]])(x, targets)[0])
        cuda_model = copy.deepcopy(model).cuda()
        with torch.autocast("cuda", dtype=torch.float16):
            maps = EigenCAM(cuda_model, [cuda_model.layer4[-1]])(x, targets)
        save(out / "cuda_autocast_float16_eigencam.png", rgb, maps[0])
    else:
        print("no CUDA device: float16 on the GPU skipped")
    return out


if __name__ == "__main__":
    main()
