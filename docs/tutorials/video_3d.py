"""Tutorial: video clips and 3-D volumes (torchvision r3d_18, a 3-D medical-style network).

Every CAM method takes 5-D input, ``[B, C, T, H, W]`` clips or ``[B, C, D, H, W]``
volumes, and returns one map per frame or slice: ``[B, T, H, W]``. Layer maps
are resized to the input with trilinear interpolation; Score-CAM upsamples its
masks the same way. (``aug_smooth`` flips 2-D images, so it is 2-D only.)

Run it (offline, random weights)::

    python docs/tutorials/video_3d.py --out video_maps
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from camlib import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from camlib.utils.image import show_cam_on_image
from camlib.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget


def save_frames(path: Path, frames: np.ndarray, maps: np.ndarray) -> None:
    """Frames [T, H, W, 3] in [0, 1] and maps [T, H, W] side by side, one image."""
    tiles = [show_cam_on_image(frame, cam, use_rgb=True) for frame, cam in zip(frames, maps)]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def moving_square_clip(frames: int = 8, size: int = 64) -> np.ndarray:
    """A clip of a bright square crossing a dark background: [T, H, W, 3] in [0, 1]."""
    clip = np.full((frames, size, size, 3), 0.1, np.float32)
    for t in range(frames):
        left = 4 + t * (size - 24) // (frames - 1)
        clip[t, 20:40, left : left + 16] = (1.0, 0.8, 0.2)
    return clip


class VolumeNet(torch.nn.Module):
    """A small 3-D CNN in the style of medical imaging models: one-channel volumes (CT, MRI),
    a classification head and a voxel-wise segmentation head."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.BatchNorm3d(8), torch.nn.ReLU(),
            torch.nn.MaxPool3d(2),
            torch.nn.Conv3d(8, 16, 3, padding=1), torch.nn.BatchNorm3d(16), torch.nn.ReLU(),
        )  # fmt: skip
        self.segment = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv3d(16, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(self.encoder(x))  # [B, classes, D, H, W]


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_video_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # -- 1. Action recognition: r3d_18 (Kinetics-400 with weights="DEFAULT"; 4 random classes here).
    model = torchvision.models.video.r3d_18(weights=None, num_classes=4).eval()
    frames = moving_square_clip()
    mean = torch.tensor([0.432, 0.394, 0.376])[:, None, None, None]  # Kinetics statistics
    std = torch.tensor([0.228, 0.221, 0.217])[:, None, None, None]
    clip = ((torch.from_numpy(frames).permute(3, 0, 1, 2) - mean) / std)[None]  # [1, 3, T=8, 64, 64]

    # The last residual stage, as for a 2-D ResNet; the map has the clip's shape [1, 8, 64, 64].
    with GradCAM(model, [model.layer4[-1]]) as cam:
        maps = cam(clip, [ClassifierOutputTarget(1)])
    print("r3d_18 GradCAM:", maps.shape)
    save_frames(out / "r3d_gradcam.png", frames, maps[0])
    # A finer layer follows the square frame by frame; EigenCAM needs no target.
    save_frames(out / "r3d_layer2_eigencam.png", frames, EigenCAM(model, [model.layer2[-1]])(clip)[0])
    # (ScoreCAM and AblationCAM work as well, at the cost of one clip forward pass per channel.)

    # -- 2. A volume: which voxels make the model segment a region as class 1?
    net = VolumeNet().eval()
    volume = torch.randn(1, 1, 16, 32, 24)  # [B, 1, D, H, W], anisotropic is fine
    with torch.no_grad():
        predicted = net(volume).argmax(dim=1)[0]  # [D, H, W]
    region = (predicted == 1).numpy()
    print(f"class 1 predicted in {int(region.sum())} of {region.size} voxels")
    target = [SemanticSegmentationTarget(1, region)]  # a [D, H, W] mask for a [K, D, H, W] output
    with GradCAMPlusPlus(net, [net.encoder]) as cam:
        maps = cam(volume, target)  # [1, 16, 32, 24]: one map per slice
    slices = np.repeat(((volume[0, 0] - volume.min()) / (volume.max() - volume.min())).numpy()[..., None], 3, -1)
    save_frames(out / "volume_gradcampp_slices_0_to_3.png", slices[:4], maps[0, :4])
    with LayerCAM(net, [net.encoder[2]]) as cam:  # an earlier, finer layer
        save_frames(out / "volume_layercam_slices_0_to_3.png", slices[:4], cam(volume, target)[0, :4])
    return out


if __name__ == "__main__":
    main()
