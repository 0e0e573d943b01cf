"""Models whose output is not a tensor: dicts, tuples, named tuples, Hugging Face ModelOutput.

Every method must give, on a model that wraps its logits in a structure, exactly
the maps it gives on the same network returning the bare tensor, with explicit
targets and with ``targets=None``, without a user-written wrapper; and
``output_adapter=`` covers the structures camlib cannot read by itself.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, model_snapshot, optional
from methods import build, method_names

from camlib import CAM, SESS, GradCAM, ScoreCAM
from camlib.utils.model_outputs import OutputAdaptedTarget, embedding_of, logits_of
from camlib.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FinerWeightedTarget,
    RawScoresOutputTarget,
    SoftmaxOutputTarget,
)

transformers = optional("transformers")
from transformers.modeling_outputs import ImageClassifierOutput  # noqa: E402

METHODS = method_names()
Outputs = namedtuple("Outputs", ["features", "logits"])


class Structured(torch.nn.Module):
    """A TinyCNN whose logits come back inside a structure of kind ``kind``."""

    def __init__(self, net: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(self, x):
        features = self.net.pool(self.net.features(x)).flatten(1)
        logits = self.net.fc(features)
        if self.kind == "dict_logits":
            return {"features": features, "logits": logits}
        if self.kind == "dict_out":  # torchvision segmentation style
            return OrderedDict(out=logits, aux=0.5 * logits)
        if self.kind == "tuple":
            return logits, features
        if self.kind == "namedtuple":  # logits is not the first field
            return Outputs(features, logits)
        if self.kind == "model_output":
            return ImageClassifierOutput(logits=logits, hidden_states=(features,))
        if self.kind == "unknown_key":
            return {"scores": logits, "features": features}
        if self.kind == "features_first":
            return features, logits
        raise AssertionError(self.kind)


KINDS = ["dict_logits", "dict_out", "tuple", "namedtuple", "model_output"]
#: Every method on two structures; every structure on methods that score outputs differently
#: (gradients, extra forward passes, a wrapper building its own targets).
CASES = sorted(
    {(m, k) for m in METHODS for k in ("dict_out", "model_output")}
    | {(m, k) for m in ("GradCAM", "AblationCAM", "FinerCAM", "FullGrad") for k in KINDS}
)


@pytest.fixture(scope="module")
def net():
    return TinyCNN().eval()


def _maps(name, model, layers, x, targets, **kwargs):
    torch.manual_seed(0)  # stochastic methods drawing from torch's generator
    np.random.seed(0)  # noqa: NPY002 (RandomCAM draws from the global generator, as pytorch-grad-cam)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(name, model, layers, **kwargs)(x, targets)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_structured_output_equals_tensor_output(method, kind, net):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    layers = [net.features[-1]]
    wrapped = Structured(net, kind).eval()
    before = model_snapshot(wrapped)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    expected = _maps(method, net, layers, x, targets)
    np.testing.assert_allclose(_maps(method, wrapped, layers, x, targets), expected, atol=1e-5)
    # targets=None: the top class is found in the structure
    expected_top = _maps(method, net, layers, x, None)
    np.testing.assert_allclose(_maps(method, wrapped, layers, x, None), expected_top, atol=1e-5)
    assert_model_untouched(wrapped, before)


@pytest.mark.parametrize("method", METHODS)
def test_output_adapter_selects_what_logits_of_cannot(method, net):
    """``(features, logits)``: logits_of would take the features; the adapter picks the logits."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    layers = [net.features[-1]]
    wrapped = Structured(net, "features_first").eval()
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    expected = _maps(method, net, layers, x, targets)
    got = _maps(method, wrapped, layers, x, targets, output_adapter=lambda out: out[1])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    got_top = _maps(method, wrapped, layers, x, None, output_adapter=lambda out: out[1])
    np.testing.assert_allclose(got_top, _maps(method, net, layers, x, None), atol=1e-5)


def test_unknown_key_error_says_how_to_fix(net):
    wrapped = Structured(net, "unknown_key").eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match=r"returned a dict, not a tensor of class scores.*'scores'.*output_adapter"):
        GradCAM(wrapped, [net.features[-1]])(x)
    with pytest.raises(TypeError, match="output_adapter"):
        GradCAM(wrapped, [net.features[-1]])(x, [ClassifierOutputTarget(1)])
    maps = GradCAM(wrapped, [net.features[-1]], output_adapter=lambda out: out["scores"])(x)
    np.testing.assert_allclose(maps, GradCAM(net, [net.features[-1]])(x), atol=1e-6)


def test_output_adapter_is_checked(net):
    with pytest.raises(TypeError, match="output_adapter must be a function"):
        GradCAM(net, [net.features[-1]], output_adapter="logits")
    cam = GradCAM(Structured(net, "dict_logits"), [net.features[-1]], output_adapter=lambda out: out.keys())
    with pytest.raises(TypeError, match="output_adapter returned a"):
        cam(torch.randn(1, 3, 16, 16))


def test_cam_reads_the_category_through_the_adapter(net):
    x = torch.randn(2, 3, 16, 16)
    wrapped = Structured(net, "unknown_key").eval()
    cam = CAM(wrapped, [net.features[-1]], output_adapter=lambda out: out["scores"])
    np.testing.assert_allclose(
        cam(x, [ClassifierOutputTarget(4)] * 2), CAM(net, [net.features[-1]])(x, [ClassifierOutputTarget(4)] * 2)
    )


def test_score_cam_extra_forward_passes_see_the_adapted_output(net):
    """The masked inputs of Score-CAM run through the wrapped model: their outputs are adapted too."""
    x = torch.randn(1, 3, 16, 16)
    seen = []

    def adapter(out):
        seen.append(type(out).__name__)
        return out["scores"]

    wrapped = Structured(net, "unknown_key").eval()
    maps = ScoreCAM(wrapped, [net.features[-1]], output_adapter=adapter, batch_size=64)(x)
    np.testing.assert_allclose(maps, ScoreCAM(net, [net.features[-1]], batch_size=64)(x), atol=1e-6)
    assert len(seen) > 3 and set(seen) == {"dict"}


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax_scores", "raw_scores"])
@pytest.mark.parametrize("kind", ["dict_out", "model_output", "unknown_key"])
def test_sess_reads_structured_outputs(kind, softmax, net):
    """SESS scores its patches itself: through the same output handling (and output_adapter)."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    kwargs = {"num_scales": 2, "use_softmax_scores": softmax}
    if kind == "unknown_key":
        kwargs["output_adapter"] = lambda out: out["scores"]
    expected = SESS(net, [net.features[-1]], num_scales=2, use_softmax_scores=softmax)(x)
    got = SESS(Structured(net, kind).eval(), [net.features[-1]], **kwargs)(x)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_logits_of_and_embedding_of():
    logits = torch.randn(2, 5)
    assert logits_of(logits) is logits
    assert logits_of({"out": logits, "aux": logits * 0}) is logits
    assert logits_of(ImageClassifierOutput(logits=logits)) is logits
    assert logits_of((logits, torch.zeros(2))) is logits
    assert logits_of(Outputs(torch.zeros(2, 3), logits)) is logits
    assert logits_of({"logits_per_image": logits, "logits_per_text": logits.T}) is logits
    with pytest.raises(TypeError, match=r"detections.*FasterRCNNBoxScoreTarget"):
        logits_of([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}])
    with pytest.raises(TypeError, match=r"not a tensor of class scores \(keys: \['a'\]\)"):
        logits_of({"a": logits})
    with pytest.raises(TypeError, match="returned a str"):
        logits_of("logits")
    embeds = torch.randn(2, 4)
    assert embedding_of({"image_embeds": embeds, "last_hidden_state": torch.zeros(2, 5, 8)}) is embeds
    assert embedding_of((embeds,)) is embeds
    with pytest.raises(TypeError, match="not an embedding tensor"):
        embedding_of({"hidden": embeds})


@pytest.mark.parametrize(
    "target",
    [
        ClassifierOutputTarget(2),
        ClassifierOutputSoftmaxTarget(2),
        ClassifierOutputReST(2),
        SoftmaxOutputTarget(),
        RawScoresOutputTarget(),
        FinerWeightedTarget(2, [0, 1], 0.5),
    ],
    ids=lambda t: type(t).__name__,
)
def test_builtin_targets_accept_structured_outputs(target):
    logits = torch.randn(5)
    expected = target(logits)
    for structured in ({"logits": logits}, {"out": logits}, (logits,), ImageClassifierOutput(logits=logits)):
        torch.testing.assert_close(target(structured), expected)
    binary = BinaryClassifierOutputTarget(0)
    torch.testing.assert_close(binary({"logits": torch.tensor([0.3])}), torch.tensor([-0.3]))


def test_output_adapted_target_passes_attributes_through():
    target = OutputAdaptedTarget(ClassifierOutputTarget(3), lambda out: out["scores"])
    assert target.category == 3
    assert target({"scores": torch.arange(5.0)}).item() == 3.0
    assert "ClassifierOutputTarget(3)" in repr(target)
    with pytest.raises(AttributeError):
        target.missing  # noqa: B018
