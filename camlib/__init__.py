"""camlib: class activation maps for PyTorch, a drop-in for pytorch-grad-cam.

Replace ``pytorch_grad_cam`` with ``camlib`` in your imports.
"""

import importlib
import pkgutil

import camlib.metrics.cam_mult_image  # the reference exposes these submodules from its root
import camlib.metrics.road  # noqa: F401
from camlib import registry
from camlib.ablation_cam import AblationCAM
from camlib.ablation_layer import AblationLayer, AblationLayerFasterRCNN, AblationLayerVit
from camlib.activations_and_gradients import ActivationsAndGradients
from camlib.base_cam import BaseCAM
from camlib.cam import CAM
from camlib.cam_wrapper import CAMWrapper
from camlib.capabilities import Capabilities
from camlib.eigen_cam import EigenCAM
from camlib.eigen_grad_cam import EigenGradCAM
from camlib.feature_factorization.deep_feature_factorization import DeepFeatureFactorization, run_dff_on_image
from camlib.fem import FEM
from camlib.finer_cam import FinerCAM
from camlib.fullgrad_cam import FullGrad
from camlib.grad_cam import GradCAM
from camlib.grad_cam_elementwise import GradCAMElementWise
from camlib.grad_cam_plusplus import GradCAMPlusPlus
from camlib.group_cam import GroupCAM
from camlib.guided_backprop import DeconvnetReLUModel, GuidedBackpropReLUModel, guided_grad_cam
from camlib.hirescam import HiResCAM
from camlib.kpca_cam import KPCA_CAM
from camlib.layer_cam import LayerCAM
from camlib.poly_cam import PolyCAM
from camlib.random_cam import RandomCAM
from camlib.recipro_cam import ReciproCAM
from camlib.refine_cam import RefineCAM
from camlib.score_cam import ScoreCAM
from camlib.seg_eigen_cam import SegEigenCAM
from camlib.sess import SESS
from camlib.shapley_cam import ShapleyCAM
from camlib.utils import model_outputs, model_targets, reshape_transforms
from camlib.xgrad_cam import XGradCAM

__version__ = "0.1.0"

# Every top-level module registers its methods when imported: import them all, so
# that a new method is one new file, and export the classes they register.
for _module in pkgutil.iter_modules(__path__):
    if not _module.ispkg and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CAM",
    "FEM",
    "KPCA_CAM",
    "SESS",
    "AblationCAM",
    "AblationLayer",
    "AblationLayerFasterRCNN",
    "AblationLayerVit",
    "ActivationsAndGradients",
    "BaseCAM",
    "CAMWrapper",
    "Capabilities",
    "DeconvnetReLUModel",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GroupCAM",
    "GuidedBackpropReLUModel",
    "HiResCAM",
    "LayerCAM",
    "PolyCAM",
    "RandomCAM",
    "ReciproCAM",
    "RefineCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "XGradCAM",
    "guided_grad_cam",
    "model_outputs",
    "model_targets",
    "registry",
    "reshape_transforms",
    "run_dff_on_image",
]
for _info in registry.methods():
    if _info.cls.__name__ not in globals():
        globals()[_info.cls.__name__] = _info.cls
        __all__.append(_info.cls.__name__)
del _module, _info
