"""Tutorial: object detection (torchvision Faster R-CNN and RetinaNet) - what a detection relies on.

A torchvision detector returns a list with one dict per image: ``boxes``,
``labels``, ``scores``. The target is ``FasterRCNNBoxScoreTarget(labels, boxes)``:
for each reference box, the detection that overlaps it best (IoU above 0.5, same
label) contributes its IoU plus its score. The reference boxes are usually the
detector's own detections, from a ``torch.no_grad()`` forward pass:
``FasterRCNNBoxScoreTarget.from_detections(detections[i], score_threshold=0.9)``.

The target layer is the backbone (``model.backbone``), whose output is a dict of
FPN levels. pytorch-grad-cam's recipe (EigenCAM with
``fasterrcnn_reshape_transform``, or AblationCAM with ``AblationLayerFasterRCNN``)
works unchanged; with camlib, gradient methods work too, and without a
reshape_transform the levels are resized to the coarsest one and concatenated.

Random weights keep this offline, so ``box_score_thresh=0`` keeps the (low-scoring)
random detections; with ``weights="DEFAULT"`` use the usual thresholds.

Run it::

    python docs/tutorials/detection.py --out detection_maps
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from camlib import AblationCAM, AblationLayerFasterRCNN, EigenCAM, GradCAM
from camlib.demo import load_sample_image
from camlib.models import resize_image
from camlib.utils.image import show_cam_on_image
from camlib.utils.model_targets import FasterRCNNBoxScoreTarget
from camlib.utils.reshape_transforms import fasterrcnn_reshape_transform


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray, boxes: np.ndarray) -> None:
    """The map over the image, with the explained boxes drawn."""
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    for x1, y1, x2, y2 in np.asarray(boxes).round().astype(int):
        cv2.rectangle(overlay, (x1, y1), (x2, y2), (255, 255, 255), 1)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_detection_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # -- 1. The detector. Small images and few proposals keep this fast on a CPU.
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=128,
        rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=20, box_detections_per_img=10, box_score_thresh=0.0,
    ).eval()  # fmt: skip
    rgb = resize_image(load_sample_image(), 128)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # detectors take [0, 1] images and normalise them

    # -- 2. The detections to explain: here the 3 best (with real weights: score_threshold=0.9).
    with torch.no_grad():
        detections = model(x)
    target = FasterRCNNBoxScoreTarget.from_detections(detections[0], score_threshold=0.0, max_boxes=3)
    print("explaining labels", target.labels)
    boxes = np.asarray(target.bounding_boxes)

    # -- 3. pytorch-grad-cam's recipe: EigenCAM on the backbone, levels laid out by the reference's
    #       transform (absolute values, resized to the "pool" level).
    layers = [model.backbone]
    with EigenCAM(model, layers, reshape_transform=fasterrcnn_reshape_transform) as cam:
        save(out / "faster_rcnn_eigencam.png", rgb, cam(x, [target])[0], boxes)

    # -- 4. Gradient methods work on the FPN's dict too; with no reshape_transform the levels keep
    #       their signs (gradients keep theirs).
    with GradCAM(model, layers) as cam:
        save(out / "faster_rcnn_gradcam.png", rgb, cam(x, [target])[0], boxes)

    # -- 5. AblationCAM: one detector pass per ablated FPN channel (5 levels x 256). A share of the
    #       channels (the most and least salient) keeps it affordable.
    with AblationCAM(
        model, layers, reshape_transform=fasterrcnn_reshape_transform, ablation_layer=AblationLayerFasterRCNN(),
        ratio_channels_to_ablate=0.01, batch_size=32,
    ) as cam:  # fmt: skip
        save(out / "faster_rcnn_ablationcam.png", rgb, cam(x, [target])[0], boxes)

    # -- 6. RetinaNet: the same target; its FPN has no "pool" level (the coarsest is used).
    retinanet = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=128, score_thresh=0.0, detections_per_img=10,
    ).eval()  # fmt: skip
    with torch.no_grad():
        detections = retinanet(x)
    target = FasterRCNNBoxScoreTarget.from_detections(detections[0], score_threshold=0.0, max_boxes=3)
    with GradCAM(retinanet, [retinanet.backbone]) as cam:
        save(out / "retinanet_gradcam.png", rgb, cam(x, [target])[0], np.asarray(target.bounding_boxes))

    # targets=None has no meaning for boxes: gradient methods say what to pass. EigenCAM, which is
    # class-agnostic, needs no target at all.
    try:
        GradCAM(model, layers)(x)
    except TypeError as err:
        print("targets=None:", str(err)[:100], "...")
    return out


if __name__ == "__main__":
    main()
