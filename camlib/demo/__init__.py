"""A bundled demo: a procedural shapes data set and a small CNN trained on it.

Everything runs offline. The data (:mod:`camlib.demo.data`) are RGB images of
shapes on cluttered backgrounds with pixel-exact masks; the model
(:mod:`camlib.demo.model`) is a multi-label CNN whose weights ship with the
package; :mod:`camlib.demo.train` reproduces them.

Example:
    >>> from camlib.demo import load_demo_model, load_sample_image, demo_preprocess, demo_target_layers
    >>> model = load_demo_model()
    >>> input_tensor = demo_preprocess(load_sample_image())
    >>> target_layers = demo_target_layers(model)
    >>> tuple(input_tensor.shape)
    (1, 3, 128, 128)
"""

from camlib.demo.data import (
    CLASS_NAMES,
    NUM_CLASSES,
    SAMPLE_CLASSES,
    SAMPLE_SEED,
    SPLIT_SEED_RANGES,
    ShapesDataset,
    load_sample_image,
    make_batch,
    make_image,
    make_sample,
    split_seed,
)
from camlib.demo.model import (
    DEMO_MEAN,
    DEMO_STD,
    DemoNet,
    demo_preprocess,
    demo_target_layers,
    load_demo_model,
    load_model_card,
)
from camlib.demo.vit import DemoViT, demo_vit_target_layers, load_demo_vit, load_vit_model_card

__all__ = [
    "CLASS_NAMES",
    "DEMO_MEAN",
    "DEMO_STD",
    "NUM_CLASSES",
    "SAMPLE_CLASSES",
    "SAMPLE_SEED",
    "SPLIT_SEED_RANGES",
    "DemoNet",
    "DemoViT",
    "ShapesDataset",
    "demo_preprocess",
    "demo_target_layers",
    "demo_vit_target_layers",
    "load_demo_model",
    "load_demo_vit",
    "load_model_card",
    "load_sample_image",
    "load_vit_model_card",
    "make_batch",
    "make_image",
    "make_sample",
    "split_seed",
]
