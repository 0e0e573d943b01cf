"""pytorch-grad-cam's public names exist at the same paths in camlib; nothing public disappears."""

from __future__ import annotations

import importlib

import pytest

import camlib

#: pytorch_grad_cam.<module> -> public names defined there (grad-cam 1.5.7).
REFERENCE_API = {
    "ablation_cam": ["AblationCAM"],
    "ablation_cam_multilayer": ["AblationLayer", "replace_layer_recursive", "AblationCAM"],
    "ablation_layer": ["AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN"],
    "activations_and_gradients": ["ActivationsAndGradients"],
    "base_cam": ["BaseCAM"],
    "eigen_cam": ["EigenCAM"],
    "eigen_grad_cam": ["EigenGradCAM"],
    "feature_factorization.deep_feature_factorization": ["dff", "DeepFeatureFactorization", "run_dff_on_image"],
    "fem": ["FEM"],
    "finer_cam": ["FinerCAM"],
    "fullgrad_cam": ["FullGrad"],
    "grad_cam": ["GradCAM"],
    "grad_cam_elementwise": ["GradCAMElementWise"],
    "grad_cam_plusplus": ["GradCAMPlusPlus"],
    "guided_backprop": ["GuidedBackpropReLU", "GuidedBackpropReLUasModule", "GuidedBackpropReLUModel"],
    "hirescam": ["HiResCAM"],
    "kpca_cam": ["KPCA_CAM"],
    "layer_cam": ["LayerCAM"],
    "metrics.arcc": ["batch_pearson_coherency", "Complexity", "Coherency", "ARCC"],
    "metrics.cam_mult_image": [
        "multiply_tensor_with_cam", "CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence",
    ],
    "metrics.perturbation_confidence": [
        "PerturbationConfidenceMetric", "RemoveMostRelevantFirst", "RemoveLeastRelevantFirst", "AveragerAcrossThresholds",
    ],
    "metrics.road": [
        "NoisyLinearImputer", "ROADMostRelevantFirst", "ROADLeastRelevantFirst", "ROADMostRelevantFirstAverage",
        "ROADLeastRelevantFirstAverage", "ROADCombined",
    ],
    "random_cam": ["RandomCAM"],
    "refine_cam": ["RefineCAM"],
    "score_cam": ["ScoreCAM"],
    "seg_eigen_cam": ["SegEigenCAM"],
    "sess": ["SESS", "sliding_window", "window_starts"],
    "shapley_cam": ["ShapleyCAM"],
    "sobel_cam": ["sobel_cam"],
    "utils.find_layers": [
        "replace_layer_recursive", "replace_all_layer_type_recursive", "find_layer_types_recursive",
        "find_layer_predicate_recursive",
    ],
    "utils.image": [
        "preprocess_image", "deprocess_image", "show_cam_on_image", "create_labels_legend",
        "show_factorization_on_image", "scale_cam_image", "scale_accross_batch_and_channels",
    ],
    "utils.model_targets": [
        "ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget", "ClassifierOutputReST",
        "BinaryClassifierOutputTarget", "SoftmaxOutputTarget", "RawScoresOutputTarget", "SemanticSegmentationTarget",
        "FasterRCNNBoxScoreTarget", "FinerWeightedTarget",
    ],
    "utils.reshape_transforms": ["fasterrcnn_reshape_transform", "swinT_reshape_transform", "vit_reshape_transform"],
    "utils.svd_on_activations": [
        "get_2d_projection", "get_2d_projection_kernel", "get_2d_projection_with_sign_correction",
    ],
    "xgrad_cam": ["XGradCAM"],
}

#: Names pytorch_grad_cam's package root exports.
REFERENCE_ROOT = [
    "GradCAM", "FinerCAM", "ShapleyCAM", "FEM", "HiResCAM", "GradCAMElementWise", "AblationLayer",
    "AblationLayerVit", "AblationLayerFasterRCNN", "AblationCAM", "XGradCAM", "GradCAMPlusPlus", "ScoreCAM",
    "LayerCAM", "EigenCAM", "EigenGradCAM", "KPCA_CAM", "RandomCAM", "FullGrad", "GuidedBackpropReLUModel",
    "SegEigenCAM", "ActivationsAndGradients", "RefineCAM", "SESS", "DeepFeatureFactorization", "run_dff_on_image",
]


@pytest.mark.parametrize("module", sorted(REFERENCE_API))
def test_module_mirrors_reference(module):
    mod = importlib.import_module(f"camlib.{module}")
    missing = [name for name in REFERENCE_API[module] if not hasattr(mod, name)]
    assert not missing, f"camlib.{module} lacks {missing}"
    assert hasattr(mod, "__all__"), f"camlib.{module} has no __all__"
    assert set(REFERENCE_API[module]) <= set(mod.__all__), f"camlib.{module}.__all__ lacks names"


def test_package_root_mirrors_reference():
    missing = [name for name in REFERENCE_ROOT if not hasattr(camlib, name)]
    assert not missing, f"camlib lacks {missing}"
    assert set(REFERENCE_ROOT) <= set(camlib.__all__)
    for submodule in ("utils.model_targets", "utils.reshape_transforms", "metrics.cam_mult_image", "metrics.road"):
        importlib.import_module(f"camlib.{submodule}")


#: camlib's own public names beyond the reference's; removing one breaks users too.
CAMLIB_ONLY_API = {
    "utils.model_outputs": [
        "EMBEDDING_KEYS", "LOGIT_KEYS", "OutputAdaptedTarget", "embedding_of", "is_detection_output", "logits_of",
    ],
    "utils.model_targets": ["SimilarityToConceptTarget"],
    "utils.reshape_transforms": [
        "feature_pyramid_to_map", "infer_reshape_transform", "num_prefix_tokens", "tokens_to_grid",
    ],
    "utils.progress": ["PROGRESS_ENV", "progress_bar", "progress_enabled"],
    "metrics": [
        "AverageDrop", "ConfidenceIncrease", "Deletion", "Insertion", "PointingGame", "EnergyPointingGame",
        "ModelParameterRandomisation",
    ],
    "cli": ["main"],
}


@pytest.mark.parametrize("module", sorted(CAMLIB_ONLY_API))
def test_camlib_only_public_names(module):
    mod = importlib.import_module(f"camlib.{module}")
    missing = [name for name in CAMLIB_ONLY_API[module] if name not in getattr(mod, "__all__", ())]
    assert not missing, f"camlib.{module}.__all__ lacks {missing}"
    assert all(hasattr(mod, name) for name in CAMLIB_ONLY_API[module])


def test_everything_in_all_exists():
    for name in camlib.__all__:
        assert hasattr(camlib, name), name


def test_typed_package_marker():
    from importlib.resources import files

    assert files("camlib").joinpath("py.typed").is_file()


def test_misspelled_helper_has_a_correct_alias():
    from camlib.utils.image import scale_accross_batch_and_channels, scale_across_batch_and_channels

    assert scale_across_batch_and_channels is scale_accross_batch_and_channels
