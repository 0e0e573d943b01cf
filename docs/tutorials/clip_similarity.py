"""Tutorial: explain an embedding (CLIP's image tower, an image encoder) by its similarity to a concept.

Image-text models and image encoders output embeddings, not class scores. The
target to explain is then the cosine similarity between the image's embedding
and a *concept* embedding: a text prompt's embedding (CLIP), another image's
embedding, or the mean embedding of a few example images.
``SimilarityToConceptTarget(concept)`` is that target.

For CLIP, the image tower alone (``CLIPVisionModelWithProjection``) takes just
the pixels, so it needs no wrapper, and its ``image_embeds`` output is found by
the target. The similarity to a prompt's text embedding is exactly CLIP's
``logits_per_image`` for that prompt divided by ``logit_scale``: explaining it is
explaining CLIP's zero-shot score for the prompt (pytorch-grad-cam's CLIP example
wraps the whole model to return those logits instead).

The CLIP here is tiny with random weights (offline). With a checkpoint::

    model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")
    vision = CLIPVisionModelWithProjection.from_pretrained("openai/clip-vit-base-patch32")
    processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")

Run it::

    python docs/tutorials/clip_similarity.py --out clip_maps
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection

from camlib import GradCAM, HiResCAM
from camlib.demo import load_sample_image
from camlib.models import IMAGENET_MEAN, IMAGENET_STD, resize_image
from camlib.utils.image import preprocess_image, show_cam_on_image
from camlib.utils.model_targets import SimilarityToConceptTarget


def save(path: Path, rgb: np.ndarray, grayscale_cam: np.ndarray) -> None:
    overlay = show_cam_on_image(rgb, grayscale_cam, use_rgb=True)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def tiny_clip() -> tuple[CLIPModel, CLIPVisionModelWithProjection]:
    """A small CLIP with random weights, and its image tower as a model of its own."""
    common = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128}
    common["projection_dim"] = 32  # the shared image-text embedding size
    # A vocabulary and special tokens for the toy prompts below (a real model comes with a tokenizer).
    text = {"vocab_size": 100, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    config = CLIPConfig(
        text_config={**common, **text},
        vision_config={**common, "image_size": 64, "patch_size": 8},
        projection_dim=32,
    )
    model = CLIPModel(config).eval()
    # The image tower shares the full model's weights: the same parameter names.
    vision = CLIPVisionModelWithProjection(config.vision_config)
    vision.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    )
    return model, vision.eval()


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="camlib_clip_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # -- 1. CLIP: the concept is a text prompt's embedding.
    model, vision = tiny_clip()
    rgb = resize_image(load_sample_image(), 64)
    x = preprocess_image(rgb, mean=(0.481, 0.458, 0.408), std=(0.269, 0.261, 0.276))  # CLIP's statistics
    prompts = {"a circle": [0, 11, 12, 2], "a square": [0, 11, 13, 2]}  # token ids (a tokenizer gives them)
    layers = [vision.vision_model.encoder.layers[-2].layer_norm1]  # not the last layer (no gradient there)
    for prompt, token_ids in prompts.items():
        with torch.no_grad():
            text = model.get_text_features(input_ids=torch.tensor([token_ids]))
        text = text if isinstance(text, torch.Tensor) else text.pooler_output  # transformers 4 / 5
        target = SimilarityToConceptTarget(text[0])
        with GradCAM(vision, layers) as cam:
            grayscale = cam(x, [target])
        with torch.no_grad():
            score = target(vision(x).image_embeds[0]).item()
        print(f"'{prompt}': cosine similarity {score:+.4f}")
        save(out / f"clip_{prompt.replace(' ', '_')}.png", rgb, grayscale[0])

    # -- 2. An image encoder, and a concept made of example images: "what in this image looks like
    #       those?" (the reference's embedding tutorial). Here a ResNet-18 without its classifier.
    encoder = torchvision.models.resnet18(weights=None)
    encoder.fc = torch.nn.Identity()  # outputs the 512-d pooled features
    encoder.eval()
    full = load_sample_image()
    rgb = resize_image(full, 96)
    x = preprocess_image(rgb, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    crops = [full[8:72, 8:72], full[40:104, 30:94]]  # "examples of the concept"
    with torch.no_grad():
        examples = torch.cat([preprocess_image(resize_image(c, 96), mean=IMAGENET_MEAN, std=IMAGENET_STD) for c in crops])
        concept = encoder(examples).mean(dim=0)
    with HiResCAM(encoder, [encoder.layer4[-1]]) as cam:
        save(out / "resnet_similarity_hirescam.png", rgb, cam(x, [SimilarityToConceptTarget(concept)])[0])
    with GradCAM(encoder, [encoder.layer3[-1]]) as cam:
        save(out / "resnet_similarity_gradcam.png", rgb, cam(x, [SimilarityToConceptTarget(concept)])[0])
    return out


if __name__ == "__main__":
    main()
