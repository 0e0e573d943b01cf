"""camlib: class activation maps for PyTorch, a drop-in for pytorch-grad-cam.

Replace ``pytorch_grad_cam`` with ``camlib`` in your imports.
"""

from camlib.activations_and_gradients import ActivationsAndGradients
from camlib.base_cam import BaseCAM
from camlib.cam import CAM
from camlib.eigen_cam import EigenCAM
from camlib.eigen_grad_cam import EigenGradCAM
from camlib.fem import FEM
from camlib.grad_cam import GradCAM
from camlib.grad_cam_elementwise import GradCAMElementWise
from camlib.grad_cam_plusplus import GradCAMPlusPlus
from camlib.hirescam import HiResCAM
from camlib.kpca_cam import KPCA_CAM
from camlib.layer_cam import LayerCAM
from camlib.random_cam import RandomCAM
from camlib.seg_eigen_cam import SegEigenCAM
from camlib.shapley_cam import ShapleyCAM
from camlib.utils import model_targets, reshape_transforms
from camlib.xgrad_cam import XGradCAM

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "FEM",
    "KPCA_CAM",
    "ActivationsAndGradients",
    "BaseCAM",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "XGradCAM",
    "model_targets",
    "reshape_transforms",
]
