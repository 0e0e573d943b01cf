"""Tests of camlib.metrics: golden values, parity with pytorch-grad-cam, the two fixed defects."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyCNN, assert_model_untouched, model_snapshot, optional
from torch import nn

import camlib.metrics as cm
from camlib.metrics import arcc, cam_mult_image, perturbation_confidence, road
from camlib.metrics._imputation import linear_infill, prolong, restrict
from camlib.utils.model_targets import ClassifierOutputTarget

ref_arcc = optional("pytorch_grad_cam.metrics.arcc")
ref_cam_mult = optional("pytorch_grad_cam.metrics.cam_mult_image")
ref_pc = optional("pytorch_grad_cam.metrics.perturbation_confidence")
ref_road = optional("pytorch_grad_cam.metrics.road")

# The reference calls numpy functions on torch tensors, which NumPy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")

MODULES = [
    (arcc, ref_arcc),
    (cam_mult_image, ref_cam_mult),
    (perturbation_confidence, ref_pc),
    (road, ref_road),
]

FOUR_NEIGHBOURS = [((0, 1), 0.25), ((0, -1), 0.25), ((1, 0), 0.25), ((-1, 0), 0.25)]
RADIUS_TWO = [
    *[((0, 2), 0.1), ((0, -2), 0.1), ((2, 0), 0.1), ((-2, 0), 0.1)],
    *[((0, 1), 0.15), ((0, -1), 0.15), ((1, 0), 0.15), ((-1, 0), 0.15)],
]


# -- helpers --------------------------------------------------------------------------------------------


def linear_model(weight: torch.Tensor, num_classes: int = 1) -> nn.Module:
    """``score_k = sum(weight_k * x)``: confidence changes can be computed on paper."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight[0].numel(), num_classes, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weight.reshape(num_classes, -1))
    return model.eval()


@pytest.fixture(scope="module")
def cnn() -> TinyCNN:
    return TinyCNN(num_classes=5, seed=3).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(3, 3, 16, 20, generator=generator)
    cams = torch.rand(3, 16, 20, generator=generator).numpy()
    targets = [ClassifierOutputTarget(c) for c in (0, 2, 4)]
    return x, cams, targets


def capture_masks(store: list):
    """An imputer that records the keep-masks it is given and leaves the image as is."""

    def imputer(image, mask):
        store.append(torch.as_tensor(np.asarray(mask), dtype=torch.float32).clone())
        return image

    return imputer


def oracle_infill(image: torch.Tensor, mask: torch.Tensor, weighting) -> torch.Tensor:
    """The reference's own system (it takes the weights as an argument) solved by SciPy."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    a, b = ref_road.NoisyLinearImputer.setup_sparse_system(mask.numpy(), image.numpy(), weighting)
    solution = np.asarray(spsolve(csc_matrix(a), b)).reshape(int((mask == 0).sum()), -1)
    out = image.reshape(image.shape[0], -1).double().clone()
    out[:, (mask.flatten() == 0)] = torch.from_numpy(solution).t()
    return out.reshape(image.shape)


# -- public API -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ours, theirs", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_public_name_of_the_reference_exists(ours, theirs):
    theirs = theirs.load()
    names = {
        name
        for name, obj in vars(theirs).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == theirs.__name__
    }
    if theirs is ref_road.load():
        names.add("neighbors_weights")
    assert names, "no public names found in the reference module"
    assert names <= set(ours.__all__), f"missing: {sorted(names - set(ours.__all__))}"
    for name in ours.__all__:
        assert hasattr(ours, name)
    assert set(ours.__all__) <= set(cm.__all__)


def test_constructor_signatures_stay_compatible():
    """Every argument of the reference's constructors is accepted, by position too."""
    for ours, theirs in MODULES:
        for name in ours.__all__:
            our_obj, their_obj = getattr(ours, name), getattr(theirs, name, None)
            if not inspect.isclass(our_obj) or their_obj is None:
                continue
            ref_params = [
                p
                for p in inspect.signature(their_obj.__init__).parameters.values()
                if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD
            ]
            our_params = list(inspect.signature(our_obj.__init__).parameters.values())[1:]
            for position, param in enumerate(ref_params):
                assert our_params[position].name == param.name, f"{name}.__init__ argument {position}"
                assert our_params[position].kind == param.POSITIONAL_OR_KEYWORD


# -- golden values on paper -----------------------------------------------------------------------------


def test_cam_mult_golden_values():
    # score = 1*a + 2*b + 3*c + 4*d over a 2x2 image of ones.
    model = linear_model(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    x = torch.ones(2, 1, 2, 2)
    cams = np.array([[[1.0, 1.0], [0.0, 0.0]], [[0.5, 2.0], [1.0, 1.0]]], dtype=np.float32)
    targets = [ClassifierOutputTarget(0)] * 2
    # image 0 keeps a, b: 3 - 10 = -7; image 1: 0.5 + 4 + 3 + 4 = 11.5, 11.5 - 10 = 1.5
    change = cm.CamMultImageConfidenceChange(progress=False)(x, cams, targets, model)
    np.testing.assert_allclose(change, [-7.0, 1.5])
    assert change.dtype == np.float32 and change.shape == (2,)
    np.testing.assert_allclose(cm.DropInConfidence(progress=False)(x, cams, targets, model), [7.0, 0.0])
    np.testing.assert_array_equal(
        cm.IncreaseInConfidence(progress=False)(x, cams, targets, model), [0.0, 1.0]
    )
    perturbed = cm.CamMultImageConfidenceChange(progress=False)(x, cams, targets, model, return_diff=False)
    np.testing.assert_allclose(perturbed, [3.0, 11.5])


def test_imputer_golden_values():
    # A row: the removed middle pixel is the mean of its two neighbours.
    row = torch.tensor([[[2.0, 10.0, 6.0]]])
    out = cm.NoisyLinearImputer(noise=0.0)(row, torch.tensor([[1.0, 0.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[[2.0, 4.0, 6.0]]]))
    # 3x3, centre removed: direct neighbours weigh 1/6, diagonal ones 1/12 (sum 1).
    image = (torch.arange(9, dtype=torch.float32) ** 2).reshape(1, 3, 3)
    mask = torch.ones(3, 3)
    mask[1, 1] = 0
    direct = 1 + 9 + 25 + 49
    diagonal = 0 + 4 + 36 + 64
    expected = direct / 6 + diagonal / 12
    out = cm.NoisyLinearImputer(noise=0.0)(image, mask)
    assert out[0, 1, 1].item() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(out[0][mask > 0], image[0][mask > 0])
    # A removed run along a row touching the border copies the last kept value.
    out = cm.NoisyLinearImputer(noise=0.0)(torch.tensor([[[3.0, 7.0, 8.0]]]), torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[[3.0, 3.0, 3.0]]]))


def test_road_golden_value_with_a_linear_model():
    # score = sum of the 3 pixels. The map ranks the middle pixel first; percentile 70
    # of [0.1, 0.9, 0.2] is 0.48, so only the middle pixel is removed and imputed as
    # (2 + 6) / 2 = 4: the score goes from 18 to 12.
    model = linear_model(torch.ones(1, 3))
    x = torch.tensor([[[[2.0, 10.0, 6.0]]]])
    cams = np.array([[[0.1, 0.9, 0.2]]], dtype=np.float32)
    imputer = cm.NoisyLinearImputer(noise=0.0)
    morf = cm.ROADMostRelevantFirst(70, imputer=imputer, progress=False)
    np.testing.assert_allclose(morf(x, cams, [ClassifierOutputTarget(0)], model), [-6.0], atol=1e-5)
    # LeRF thresholds 1 - map = [0.9, 0.1, 0.8] at its 70th percentile, 0.84: only the
    # first pixel is removed, and its one neighbour makes it 10: 26 - 18 = 8.
    lerf = cm.ROADLeastRelevantFirst(70, imputer=imputer, progress=False)
    np.testing.assert_allclose(lerf(x, cams, [ClassifierOutputTarget(0)], model), [8.0], atol=1e-5)
    combined = cm.ROADCombined([70], imputer=imputer, progress=False)
    np.testing.assert_allclose(
        combined(x, cams, [ClassifierOutputTarget(0)], model), [(8.0 + 6.0) / 2], atol=1e-5
    )


def test_complexity_and_pearson_golden_values():
    cams = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.25, 0.25], [0.25, 0.25]]], dtype=np.float32)
    np.testing.assert_allclose(cm.Complexity()(cams), [0.5, 0.25])
    a = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    b = np.array([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(cm.batch_pearson_coherency(a, b), [1.0, -1.0], atol=1e-6)
    assert cm.batch_pearson_coherency(torch.from_numpy(a), torch.from_numpy(b)).shape == (2,)


# -- parity with pytorch-grad-cam ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence"])
def test_cam_mult_parity(name, cnn, batch):
    x, cams, targets = batch
    ours = getattr(cm, name)(progress=False)(x, cams, targets, cnn)
    theirs = getattr(ref_cam_mult, name)()(x, cams, targets, cnn)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert ours.dtype == np.float32


def test_perturbation_metric_parity_with_a_per_image_callable(cnn, batch):
    x, cams, targets = batch
    seen = []

    def darken(image, cam):
        seen.append((image.device.type, tuple(image.shape), tuple(cam.shape)))
        return image * (1 - cam) - 0.5 * cam

    ours, visual = cm.PerturbationConfidenceMetric(darken, progress=False)(
        x, cams, targets, cnn, return_visualization=True
    )
    theirs, ref_visual = ref_pc.PerturbationConfidenceMetric(darken)(
        x, cams, targets, cnn, return_visualization=True
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    torch.testing.assert_close(visual, ref_visual)
    # called per image with CPU tensors, as pytorch-grad-cam calls it
    assert seen[0] == ("cpu", (3, 16, 20), (16, 20))
    raw = cm.PerturbationConfidenceMetric(darken, progress=False)(x, cams, targets, cnn, return_diff=False)
    np.testing.assert_allclose(
        raw, ref_pc.PerturbationConfidenceMetric(darken)(x, cams, targets, cnn, return_diff=False), atol=1e-5
    )


@pytest.mark.parametrize("percentile", [0, 10, 33.3, 50, 90, 100])
@pytest.mark.parametrize("kind", ["RemoveMostRelevantFirst", "RemoveLeastRelevantFirst"])
def test_percentile_masks_match_the_reference(kind, percentile):
    generator = torch.Generator().manual_seed(int(percentile * 10) + len(kind))
    cams = torch.rand(4, 9, 11, generator=generator)
    cams[0] = 0.0  # constant map: everything ties
    cams[1, :5] = 0.0  # many ties at the minimum
    cams[2] = (cams[2] * 4).round() / 4  # a few levels only
    image = torch.zeros(1, 9, 11)
    ours, theirs = [], []
    for cam in cams:
        getattr(cm, kind)(percentile, capture_masks(ours))(image, cam)
        getattr(ref_pc, kind)(percentile, capture_masks(theirs))(image, cam)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", ["ROADMostRelevantFirst", "ROADLeastRelevantFirst"])
@pytest.mark.parametrize("percentile", [20, 80])
def test_road_parity_with_seeded_noise(cls, percentile, cnn, batch):
    x, cams, targets = batch
    torch.manual_seed(11)
    ours = getattr(cm, cls)(percentile, progress=False)(x, cams, targets, cnn)
    torch.manual_seed(11)
    theirs = getattr(ref_road, cls)(percentile)(x, cams, targets, cnn)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize(
    "cls", ["ROADMostRelevantFirstAverage", "ROADLeastRelevantFirstAverage", "ROADCombined"]
)
def test_road_average_parity_with_seeded_noise(cls, cnn, batch):
    x, cams, targets = batch
    percentiles = [10, 50, 90]
    torch.manual_seed(5)
    # batch_size=4 splits the 9 (or 18) perturbed images across chunks and percentiles
    ours = getattr(cm, cls)(percentiles, batch_size=4, progress=False)(x, cams, targets, cnn)
    torch.manual_seed(5)
    theirs = getattr(ref_road, cls)(percentiles)(x, cams, targets, cnn)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_averager_with_a_custom_factory_matches_the_reference(cnn, batch):
    x, cams, targets = batch
    ours = cm.AveragerAcrossThresholds(
        lambda p: cm.PerturbationConfidenceMetric(
            cm.RemoveMostRelevantFirst(p, lambda img, mask: img * mask)
        ),
        [25, 75],
        progress=False,
    )(x, cams, targets, cnn)
    theirs = ref_pc.AveragerAcrossThresholds(
        lambda p: ref_pc.PerturbationConfidenceMetric(
            ref_pc.RemoveMostRelevantFirst(p, lambda img, mask: img * mask)
        ),
        [25, 75],
    )(x, cams, targets, cnn)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # a factory of metrics that post-process their scores is called one by one
    drops = cm.AveragerAcrossThresholds(lambda p: cm.DropInConfidence(progress=False), [1, 2])(
        x, cams, targets, cnn
    )
    np.testing.assert_allclose(drops, ref_cam_mult.DropInConfidence()(x, cams, targets, cnn), atol=1e-5)


@pytest.mark.parametrize("shape", [(9, 13), (64, 64)])
def test_imputer_parity_without_noise(shape):
    generator = torch.Generator().manual_seed(shape[0])
    image = torch.randn(3, *shape, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    blob = torch.exp(-((yy - shape[0] * 0.4) ** 2 + (xx - shape[1] * 0.6) ** 2) / (2 * (shape[0] / 4) ** 2))
    for mask in [(blob < blob.quantile(0.3)).float(), (torch.rand(shape, generator=generator) > 0.5).float()]:
        ours = cm.NoisyLinearImputer(noise=0.0)(image, mask)
        theirs = ref_road.NoisyLinearImputer(noise=0.0)(image, mask)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_imputer_noise_follows_torch_seed_and_generator():
    image = torch.randn(2, 12, 10)
    mask = (torch.rand(12, 10) > 0.4).float()
    torch.manual_seed(3)
    ours = cm.NoisyLinearImputer()(image, mask)
    torch.manual_seed(3)
    theirs = ref_road.NoisyLinearImputer()(image, mask)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    a = cm.NoisyLinearImputer(noise=0.5, generator=torch.Generator().manual_seed(1))(image, mask)
    b = cm.NoisyLinearImputer(noise=0.5, generator=torch.Generator().manual_seed(1))(image, mask)
    c = cm.NoisyLinearImputer(noise=0.5, generator=torch.Generator().manual_seed(2))(image, mask)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, mask > 0], image[:, mask > 0])  # kept pixels get no noise


def test_complexity_coherency_arcc_parity(cnn, batch):
    x, cams, targets = batch

    def base_method(input_tensor, targets):  # a deterministic stand-in for a CAM
        maps = input_tensor.abs().mean(dim=1)
        maps = maps - maps.amin(dim=(1, 2), keepdim=True)
        return (maps / maps.amax(dim=(1, 2), keepdim=True)).numpy()

    np.testing.assert_allclose(cm.Complexity()(cams), ref_arcc.Complexity()(cams), atol=1e-6)
    np.testing.assert_allclose(
        cm.Coherency()(x, cams, targets, cnn, base_method),
        ref_arcc.Coherency()(x, cams, targets, cnn, base_method),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        cm.batch_pearson_coherency(cams, cams[::-1].copy()),
        ref_arcc.batch_pearson_coherency(cams, cams[::-1]),
        atol=1e-5,
    )
    torch.manual_seed(2)
    ours = cm.ARCC(base_method, progress=False)(x, cams, targets, cnn)
    torch.manual_seed(2)
    theirs = ref_arcc.ARCC(base_method)(x, cams, targets, cnn)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


# -- the two defects of the reference, fixed --------------------------------------------------------------


def test_weighting_argument_is_used():
    image = (torch.arange(9, dtype=torch.float32) ** 2).reshape(1, 3, 3)
    mask = torch.ones(3, 3)
    mask[1, 1] = 0
    four_mean = (1 + 9 + 25 + 49) / 4  # 21
    default = ref_road.NoisyLinearImputer(noise=0.0)(image, mask)[0, 1, 1].item()
    # the reference's defect: its weighting argument changes nothing
    ignored = ref_road.NoisyLinearImputer(noise=0.0, weighting=FOUR_NEIGHBOURS)(image, mask)[0, 1, 1].item()
    assert ignored == pytest.approx(default) and ignored != pytest.approx(four_mean)
    # fixed: the four direct neighbours only
    ours = cm.NoisyLinearImputer(noise=0.0, weighting=FOUR_NEIGHBOURS)(image, mask)[0, 1, 1].item()
    assert ours == pytest.approx(four_mean, abs=1e-5)


@pytest.mark.parametrize(
    "weighting",
    [
        FOUR_NEIGHBOURS,
        RADIUS_TWO,
        [((0, 1), 0.5), ((1, 0), 0.3), ((-1, -1), 0.2)],  # not symmetric: BiCGSTAB
    ],
    ids=["four", "radius2", "asymmetric"],
)
def test_custom_weightings_solve_the_intended_system(weighting):
    generator = torch.Generator().manual_seed(0)
    for shape, removed in [((13, 30), 0.6), ((40, 17), 0.9)]:
        image = torch.randn(2, *shape, generator=generator)
        mask = (torch.rand(shape, generator=generator) > removed).float()
        ours = cm.NoisyLinearImputer(noise=0.0, weighting=weighting)(image, mask)
        torch.testing.assert_close(ours.double(), oracle_infill(image, mask, weighting), atol=1e-4, rtol=0)


def test_auto_threshold_polarity_is_fixed():
    cam = torch.zeros(8, 8)
    cam[2:5, 2:5] = 1.0
    cam = 0.9 * cam + torch.linspace(0, 0.1, 64).reshape(8, 8)  # in [0, 1], no ties
    hot = (slice(2, 5), slice(2, 5))
    image = torch.zeros(1, 8, 8)
    for kind, hot_kept_fixed in [("RemoveMostRelevantFirst", 0.0), ("RemoveLeastRelevantFirst", 1.0)]:
        theirs, ours = [], []
        getattr(ref_pc, kind)("auto", capture_masks(theirs))(image, cam)
        getattr(cm, kind)("auto", capture_masks(ours))(image, cam)
        # the reference's defect: 'auto' keeps what the percentile mode removes
        percentile = []
        getattr(ref_pc, kind)(50, capture_masks(percentile))(image, cam)
        assert (theirs[0][hot] > 0.5).float().mean() == 1.0 - hot_kept_fixed
        assert (percentile[0][hot] > 0.5).float().mean() == hot_kept_fixed
        # fixed: the same side as the percentile mode, and exactly the complement of the reference
        assert (ours[0][hot] > 0.5).float().mean() == hot_kept_fixed
        assert torch.equal(ours[0], (theirs[0] < 0.5).float())


def test_otsu_threshold_matches_opencv_up_to_the_fixed_polarity():
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):
        base = torch.rand(2, 2, generator=generator)
        cam = torch.nn.functional.interpolate(base[None, None] * 0.7, size=(15, 17), mode="bilinear")[0, 0]
        cam = (cam + 0.3 * torch.rand(15, 17, generator=generator)).clamp(0, 1)
        ours, theirs = [], []
        cm.RemoveMostRelevantFirst("auto", capture_masks(ours))(torch.zeros(1, 15, 17), cam)
        ref_pc.RemoveMostRelevantFirst("auto", capture_masks(theirs))(torch.zeros(1, 15, 17), cam)
        assert torch.equal(ours[0], (theirs[0] < 0.5).float())


# -- behaviour ------------------------------------------------------------------------------------------


def _region_model_and_maps():
    """A model that only looks at a 4x4 region R, an image bright in R, a perfect and a random map."""
    weight = torch.zeros(1, 1, 16, 16)
    weight[..., 6:10, 5:9] = 1.0
    model = linear_model(weight)
    x = torch.zeros(2, 1, 16, 16)
    x[..., 6:10, 5:9] = 5.0
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    perfect = torch.exp(-((yy - 7.5) ** 2 + (xx - 6.5) ** 2) / 8.0)
    perfect = perfect / perfect.max()
    random = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    cams = torch.stack([perfect, random]).numpy()
    return model, x, cams, [ClassifierOutputTarget(0)] * 2


def test_a_perfect_map_beats_a_random_map():
    model, x, cams, targets = _region_model_and_maps()
    imputer = cm.NoisyLinearImputer(noise=0.0)
    percentiles = [30, 60, 90]
    combined = cm.ROADCombined(percentiles, imputer=imputer, progress=False)(x, cams, targets, model)
    assert combined[0] > combined[1] + 1.0
    morf = cm.ROADMostRelevantFirstAverage(percentiles, imputer=imputer, progress=False)(
        x, cams, targets, model
    )
    lerf = cm.ROADLeastRelevantFirstAverage(percentiles, imputer=imputer, progress=False)(
        x, cams, targets, model
    )
    assert morf[0] < morf[1] and lerf[0] > lerf[1]
    drop = cm.DropInConfidence(progress=False)(x, cams, targets, model)
    assert drop[0] < drop[1]
    arcc_scores = cm.ARCC(lambda input_tensor, targets: cams, percentiles, imputer=imputer, progress=False)(
        x, cams, targets, model
    )
    assert arcc_scores[0] > arcc_scores[1]


def test_batch_size_does_not_change_the_result(cnn, batch):
    x, cams, targets = batch
    results = [
        cm.ROADCombined([30, 70], imputer=cm.NoisyLinearImputer(noise=0.0), batch_size=size, progress=False)(
            x, cams, targets, cnn
        )
        for size in (1, 5)
    ]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=1e-6)


def test_model_is_left_untouched_and_run_in_eval_mode(batch):
    x, cams, targets = batch
    model = TinyCNN(num_classes=5, seed=3).train()
    before = model_snapshot(model)
    scores = cm.ROADMostRelevantFirst(imputer=cm.NoisyLinearImputer(noise=0.0), batch_size=1, progress=False)(
        x, cams, targets, model
    )
    assert_model_untouched(model, before)
    assert model.training
    expected = cm.ROADMostRelevantFirst(imputer=cm.NoisyLinearImputer(noise=0.0), progress=False)(
        x, cams, targets, model.eval()
    )
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_return_visualization(cnn, batch):
    x, cams, targets = batch
    scores, perturbed = cm.DropInConfidence(progress=False)(x, cams, targets, cnn, return_visualization=True)
    assert scores.shape == (3,) and perturbed.shape == x.shape and perturbed.device == x.device
    torch.testing.assert_close(perturbed, x * torch.from_numpy(cams)[:, None])


def test_batched_perturbations_accept_single_images_and_batches():
    image = torch.randn(3, 10, 12)
    cam = torch.rand(10, 12)
    imputer = cm.NoisyLinearImputer(noise=0.0)
    single = cm.RemoveMostRelevantFirst(60, imputer)(image, cam)
    batched = cm.RemoveMostRelevantFirst(60, imputer)(
        image[None].repeat(2, 1, 1, 1), cam[None].repeat(2, 1, 1)
    )
    assert single.shape == image.shape and batched.shape == (2, *image.shape)
    torch.testing.assert_close(batched[1], single)
    torch.testing.assert_close(cm.multiply_tensor_with_cam(image, cam), image * cam)
    torch.testing.assert_close(cm.multiply_tensor_with_cam(image[None], cam[None]), (image * cam)[None])


def test_all_pixels_removed_warns_and_gives_zero():
    image = torch.randn(2, 6, 5)
    with pytest.warns(RuntimeWarning, match="every pixel"):
        ours = cm.NoisyLinearImputer(noise=0.0)(image, torch.zeros(6, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ref_road.NoisyLinearImputer(noise=0.0)(image, torch.zeros(6, 5))
    assert torch.equal(ours, torch.zeros_like(image))
    torch.testing.assert_close(ours, theirs.abs())


def test_nothing_removed_returns_the_image():
    image = torch.randn(3, 7, 7)
    assert torch.equal(cm.NoisyLinearImputer()(image, torch.ones(7, 7)), image)


def test_grid_transfer_operators_are_adjoint():
    generator = torch.Generator().manual_seed(0)
    for fine in [(13, 10), (8, 9), (1, 5), (2, 2)]:
        coarse = ((fine[0] + 1) // 2, (fine[1] + 1) // 2)
        c = torch.randn(2, 3, *coarse, dtype=torch.float64, generator=generator)
        f = torch.randn(2, 3, *fine, dtype=torch.float64, generator=generator)
        lhs = (prolong(c, fine) * f).sum()
        rhs = (c * restrict(f, coarse)).sum()
        assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


def test_linear_infill_is_batched_and_exact_on_a_crop():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 2, 20, 24, generator=generator)
    missing = torch.zeros(3, 20, 24, dtype=torch.bool)
    missing[0, 3:9, 4:10] = True  # solved on a crop
    missing[1, 0:20:3, :] = True  # full width
    missing[2] = torch.rand(20, 24, generator=generator) > 0.3
    together = linear_infill(images, missing, road.neighbors_weights)
    for i in range(3):
        alone = oracle_infill(images[i], (~missing[i]).float(), road.neighbors_weights)
        torch.testing.assert_close(together[i].double(), alone, atol=1e-5, rtol=0)


def test_progress_bar_switches(capsys, monkeypatch, batch):
    x, cams, targets = batch
    model = TinyCNN(num_classes=5).eval()
    monkeypatch.delenv("CAMLIB_DISABLE_PROGRESS", raising=False)
    cm.CamMultImageConfidenceChange(progress=True)(x, cams, targets, model)
    assert "CamMultImageConfidenceChange" in capsys.readouterr().err
    cm.CamMultImageConfidenceChange(progress=False)(x, cams, targets, model)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CAMLIB_DISABLE_PROGRESS", "1")
    cm.ROADCombined([50], imputer=cm.NoisyLinearImputer(noise=0.0))(x, cams, targets, model)
    assert capsys.readouterr().err == ""


# -- errors -----------------------------------------------------------------------------------------------


def test_errors_are_clear(cnn, batch):
    x, cams, targets = batch
    metric = cm.CamMultImageConfidenceChange(progress=False)
    with pytest.raises(TypeError, match="input_tensor"):
        metric(x.numpy(), cams, targets, cnn)
    with pytest.raises(ValueError, match=r"cams must have shape \[B, \*spatial\]"):
        metric(x, cams[:, :8], targets, cnn)
    with pytest.raises(ValueError, match="3 targets for a batch"):
        metric(x[:2], cams[:2], targets, cnn)
    with pytest.raises(TypeError, match="one callable per image"):
        metric(x, cams, None, cnn)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        metric(x, cams.tolist(), targets, cnn)
    with pytest.raises(ValueError, match="NaN"):
        metric(x, np.full_like(cams, np.nan), targets, cnn)
    with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\]"):
        cm.ROADMostRelevantFirst(150)
    with pytest.raises(ValueError, match="'auto'"):
        cm.RemoveMostRelevantFirst("otsu", cm.NoisyLinearImputer())
    with pytest.raises(ValueError, match=r"scaled to \[0, 1\]"):
        cm.RemoveMostRelevantFirst("auto", cm.NoisyLinearImputer())(x[0], torch.full((16, 20), 2.0))
    with pytest.raises(ValueError, match="batch_size"):
        cm.ROADCombined(batch_size=0)
    with pytest.raises(ValueError, match="percentiles is empty"):
        cm.ROADCombined([])
    with pytest.raises(ValueError, match="noise"):
        cm.NoisyLinearImputer(noise=-1)
    with pytest.raises(TypeError, match="weighting"):
        cm.NoisyLinearImputer(weighting="8-neighbours")
    with pytest.raises(ValueError, match="positive"):
        cm.NoisyLinearImputer(weighting=[((0, 1), -1.0)])
    with pytest.raises(ValueError, match="twice"):
        cm.NoisyLinearImputer(weighting=[((0, 1), 1.0), ((0, 1), 2.0)])
    with pytest.raises(ValueError, match=r"\(0, 0\)"):
        cm.NoisyLinearImputer(weighting=[((0, 0), 1.0)])
    with pytest.raises(ValueError, match="keep the image's shape"):
        cm.PerturbationConfidenceMetric(lambda image, cam: image[:1], progress=False)(x, cams, targets, cnn)
    with pytest.raises(ValueError, match="expects an image"):
        cm.NoisyLinearImputer()(x[0], torch.ones(5, 5))
    with pytest.raises(TypeError, match="CAM"):
        cm.ARCC(base_method="GradCAM")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_road_on_cuda_matches_cpu(batch):
    x, cams, targets = batch
    model = TinyCNN(num_classes=5, seed=3).eval()
    metric = cm.ROADCombined([20, 60], imputer=cm.NoisyLinearImputer(noise=0.0), progress=False)
    on_cpu = metric(x, cams, targets, model)
    on_gpu = metric(x.cuda(), cams, targets, model.cuda())
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
