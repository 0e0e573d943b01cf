"""Similarity-to-concept targets: explain an embedding model (image encoder, CLIP's image
tower) with respect to a text or image embedding, without a wrapper."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_model_untouched, model_snapshot
from methods import build, capabilities, method_names

from camlib import GradCAM
from camlib.utils.model_targets import ClassifierOutputTarget, SimilarityToConceptTarget

METHODS = method_names()


@pytest.fixture(scope="module")
def encoder():
    """A ResNet-18 image encoder: the 512-d pooled features (fc replaced by Identity)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    return model.eval()


def test_target_values():
    concept = torch.tensor([3.0, 4.0])
    target = SimilarityToConceptTarget(concept)
    assert target(torch.tensor([3.0, 4.0])).item() == pytest.approx(1.0)
    assert target(torch.tensor([-4.0, 3.0])).item() == pytest.approx(0.0, abs=1e-7)
    batch = target(torch.tensor([[3.0, 4.0], [-3.0, -4.0]]))
    torch.testing.assert_close(batch, torch.tensor([1.0, -1.0]))
    # a pooled [C, 1, 1] map, a [1, D] concept, numpy, a structured output
    assert SimilarityToConceptTarget(np.array([[3.0, 4.0]]))(torch.tensor([3.0, 4.0])[:, None, None]).item() == (
        pytest.approx(1.0)
    )
    assert target({"image_embeds": torch.tensor([3.0, 4.0]), "last_hidden_state": torch.zeros(3, 8)}).item() == (
        pytest.approx(1.0)
    )
    assert target(torch.tensor([3.0, 4.0], dtype=torch.bfloat16)).dtype == torch.float32
    with pytest.raises(ValueError, match="one float embedding"):
        SimilarityToConceptTarget(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2 dimensions"):
        target(torch.zeros(5))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_explains_an_image_embedding(method, encoder):
    """The concept is another image's embedding; the first image is explained with respect to it."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 96, 96, generator=generator)  # a 3x3 map: FEM needs more than 2x2
    with torch.no_grad():
        concept = encoder(images[2:]).mean(0)
    x = images[:2]
    before = model_snapshot(encoder)
    targets = [SimilarityToConceptTarget(concept)] * 2
    if capabilities(method).classifier_weights:  # an encoder has no classifier row to weight channels by
        with pytest.raises(TypeError, match=r"final nn\.Linear classifier"):
            build(method, encoder, [encoder.layer4[-1]])(x, targets)
        return
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = build(method, encoder, [encoder.layer4[-1]])(x, targets)
    assert maps.shape == (2, 96, 96) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.max() > 0
    assert_model_untouched(encoder, before)


def test_image_similarity_parity_with_reference(encoder):
    """The reference's embedding tutorial defines this target itself; the pipeline matches."""
    ref = pytest.importorskip("pytorch_grad_cam")

    class ReferenceStyleTarget:
        def __init__(self, features):
            self.features = features

        def __call__(self, model_output):
            return torch.nn.functional.cosine_similarity(model_output, self.features, dim=0)

    generator = torch.Generator().manual_seed(5)
    x, other = torch.randn(2, 1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        concept = encoder(other)[0]
    cam = ref.GradCAM(encoder, [encoder.layer4[-1]])
    try:
        expected = cam(x, [ReferenceStyleTarget(concept)])
    finally:
        cam.activations_and_grads.release()
        encoder.zero_grad(set_to_none=True)
    got = GradCAM(encoder, [encoder.layer4[-1]])(x, [SimilarityToConceptTarget(concept)])
    np.testing.assert_allclose(got, expected, atol=1e-4)


# -- CLIP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    transformers = pytest.importorskip("transformers")
    common = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
    common["projection_dim"] = 16
    text = {"vocab_size": 64, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    config = transformers.CLIPConfig(
        text_config={**common, **text},
        vision_config={**common, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    # The image tower on its own takes pixel_values only, so it needs no wrapper; with a
    # checkpoint it is CLIPVisionModelWithProjection.from_pretrained(name).
    vision = transformers.CLIPVisionModelWithProjection(config.vision_config)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    vision.load_state_dict(state)
    return model, vision.eval()


def _text_embedding(model, token_ids):
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.tensor([token_ids]))
    return (out if isinstance(out, torch.Tensor) else out.pooler_output)[0]


def test_clip_image_explained_by_a_text_embedding(clip):
    model, vision = clip
    text = _text_embedding(model, [0, 5, 9, 2])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    layers = [vision.vision_model.encoder.layers[-2].layer_norm1]
    before = model_snapshot(vision)
    target = SimilarityToConceptTarget(text)
    # The similarity is CLIP's own image-text logit divided by its logit scale.
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[0, 5, 9, 2]]), pixel_values=x).logits_per_image[:, 0]
        similarity = torch.stack([target(o) for o in vision(x).image_embeds])
    torch.testing.assert_close(similarity * model.logit_scale.exp(), logits, rtol=1e-4, atol=1e-4)
    for method in ("GradCAM", "GradCAMPlusPlus", "ScoreCAM", "AblationCAM", "EigenCAM", "LayerCAM"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the target layer gets a gradient
            maps = build(method, vision, layers)(x, [target, target])
        assert maps.shape == (2, 32, 32) and np.isfinite(maps).all() and maps.max() > 0, method
    assert_model_untouched(vision, before)


def test_clip_different_concepts_give_different_maps(clip):
    model, vision = clip
    layers = [vision.vision_model.encoder.layers[-2].layer_norm1]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    first = GradCAM(vision, layers)(x, [SimilarityToConceptTarget(_text_embedding(model, [0, 5, 9, 2]))])
    second = GradCAM(vision, layers)(x, [SimilarityToConceptTarget(_text_embedding(model, [0, 30, 2]))])
    assert np.abs(first - second).max() > 1e-3


def test_clip_needs_a_target(clip):
    _, vision = clip
    with pytest.raises(TypeError, match=r"not a tensor of class scores.*image_embeds"):
        GradCAM(vision, [vision.vision_model.encoder.layers[-2].layer_norm1])(torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="not a tensor of class scores"):
        GradCAM(vision, [vision.vision_model.encoder.layers[-2].layer_norm1])(
            torch.randn(1, 3, 32, 32), [ClassifierOutputTarget(0)]
        )
