"""Attention capture and the transformer-native methods (attention rollout, Chefer et al.'s
transformer attribution, LeGrad).

Golden values come from a 2-block toy transformer with hand-set attention matrices, whose
rollout, relevance and LeGrad maps are worked out by hand below. The capture is checked on
torchvision's, timm's and Hugging Face's ViT (one set of weights copied into all three must
give the same attention, gradients and maps), against an explicit re-implementation of
torchvision's forward pass, and for leaving the model as it was. Oracles: ``fast-vit-rollout``
(optional) for rollout and torchcam 0.5.0's LeGrad (optional).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import optional
from torch import nn

from camlib.attention_rollout import attention_rollout, fuse_heads
from camlib.legrad import legrad_relevance
from camlib.transformer_attribution import transformer_relevance
from camlib.utils.attention import (
    AttentionRecord,
    attention_kind,
    attention_pass,
    capture_attention,
    class_token_relevance,
    find_attention_modules,
    has_class_token,
    relevance_to_grid,
    stack_by_module,
    transformer_blocks,
)
from camlib.utils.reshape_transforms import num_prefix_tokens

timm = optional("timm")  # skips only the tests that use it

# ---------------------------------------------------------------------------------------------
# A 2-block toy transformer with hand-set attention: tokens [cls, p1, p2] (a 1 x 2 patch grid
# of a 16 x 32 input), V = identity, no MLP, head on the class token.
# ---------------------------------------------------------------------------------------------
A1 = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]]
A2 = [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


class ToyAttention(nn.Module):
    """timm-style: a ``fused_attn`` switch and an ``attn_drop`` the explicit path goes through."""

    def __init__(self, matrix) -> None:
        super().__init__()
        self.fused_attn = True
        self.attn_drop = nn.Dropout(0.0)
        self.matrix = nn.Parameter(torch.tensor(matrix)[None])  # one head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.matrix.expand(x.shape[0], -1, -1, -1)
        if not self.fused_attn:
            attn = self.attn_drop(attn)
        return (attn @ x[:, None]).mean(dim=1)


class ToyBlock(nn.Module):
    def __init__(self, matrix) -> None:
        super().__init__()
        self.attn = ToyAttention(matrix)
        self.mlp = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x)


class ToyViT(nn.Module):
    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.tensor([[[1.0, 0.0]]]))
        self.blocks = nn.ModuleList([ToyBlock(A1), ToyBlock(A2)])
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 2.0], [1.0, -1.0]]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        patches = F.avg_pool2d(image, 16).flatten(2).transpose(1, 2)  # [B, 2, 2]
        x = torch.cat([self.cls_token.expand(image.shape[0], -1, -1), patches], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])


def toy_input() -> torch.Tensor:
    """Patch 1 has features [0, 1], patch 2 [1, 1]."""
    image = torch.zeros(1, 2, 16, 32)
    image[:, 1, :, :16] = 1.0
    image[:, :, :, 16:] = 1.0
    return image


# By hand: with x0 = [cls, p1, p2] = [[1, 0], [0, 1], [1, 1]] and w = head row 0 = [1, 2],
# w.x0 = [1, 2, 3]; x1 = (I + A1) x0 = [[1.5, .5], [0, 2], [1.5, 2]], w.x1 = [2.5, 4, 5.5].
#
# Rollout: (A + I) / 2 per block; row 0 of (A2 + I)/2 (A1 + I)/2 = [.5625, .25, .1875].
ROLLOUT_PATCHES = [0.25, 0.1875]
# Chefer: dS/dA2[i, j] = [i == 0] w.x1[j];  dS/dA1[i, j] = (I + A2)[0, i] w.x0[j].
#   Abar1 = relu(G1 * A1) = [[.75, 1.5, 0], [0, 0, 0], [0, .5, .75]],  Abar2 row 0 = [1.25, 0, 2.75].
#   R1 = I + Abar1;  R2 = R1 + Abar2 R1;  row 0 of R2 = [3.9375, 4.75, 4.8125].
RELEVANCE_ROW = [3.9375, 4.75, 4.8125]
# LeGrad with s_l = w . mean_i z_l[i]: dS_l/dA_l[i, j] = w.x_{l-1}[j] / 3 for every query i;
#   blocks 1 and 2 give [1, 2, 3] / 3 and [2.5, 4, 5.5] / 3, their mean [.58333, 1, 1.41667].
LEGRAD_KEYS = [3.5 / 6, 1.0, 8.5 / 6]


def test_toy_capture_switches_to_the_explicit_path_and_back():
    model = ToyViT()
    assert [attention_kind(m) for m in find_attention_modules(model)] == ["timm", "timm"]
    assert transformer_blocks(model) == list(model.blocks)
    with capture_attention(model) as record:
        assert all(not b.attn.fused_attn for b in model.blocks)
        model(toy_input())
    assert all(b.attn.fused_attn for b in model.blocks)
    assert torch.equal(record.attentions[0][0, 0], torch.tensor(A1))
    assert record.prefix_tokens == 1 and record.class_token


def test_rollout_golden_on_the_toy_transformer():
    model = ToyViT()
    with torch.no_grad(), capture_attention(model) as record:
        model(toy_input())
    rollout = attention_rollout(record.attentions)
    torch.testing.assert_close(rollout[0, 0], torch.tensor([0.5625, 0.25, 0.1875]))
    grid = relevance_to_grid(class_token_relevance(rollout, True), (16, 32), record.prefix_tokens)
    torch.testing.assert_close(grid, torch.tensor([[ROLLOUT_PATCHES]]))


def test_transformer_relevance_golden_on_the_toy_transformer():
    model = ToyViT()
    with capture_attention(model, differentiable=True) as record:
        score = model(toy_input())[:, 0].sum()
    gradients = torch.autograd.grad(score, record.attentions)
    torch.testing.assert_close(gradients[1][0, 0], torch.tensor([[2.5, 4.0, 5.5], [0, 0, 0], [0, 0, 0]]))
    torch.testing.assert_close(gradients[0][0, 0], torch.tensor([[1.5, 3.0, 4.5], [0, 0, 0], [0.5, 1.0, 1.5]]))
    relevance = transformer_relevance(record.attentions, gradients)
    torch.testing.assert_close(relevance[0, 0], torch.tensor(RELEVANCE_ROW))
    assert all(p.grad is None for p in model.parameters())


def test_legrad_golden_on_the_toy_transformer():
    model = ToyViT()
    blocks = transformer_blocks(model)
    with capture_attention(model, differentiable=True, blocks=blocks) as record:
        model(toy_input())
    gradients = [
        torch.autograd.grad(model.head(z.mean(dim=1))[:, 0].sum(), a, retain_graph=True)[0]
        for z, a in zip(record.block_outputs, record.attentions)
    ]
    torch.testing.assert_close(legrad_relevance(gradients)[0], torch.tensor(LEGRAD_KEYS))


# ---------------------------------------------------------------------------------------------
# The pure functions on hand-made matrices
# ---------------------------------------------------------------------------------------------
def test_head_fusion_and_discard_golden():
    two_heads = torch.stack([torch.tensor(A1), torch.eye(3)])[None]  # [1, 2, 3, 3]
    torch.testing.assert_close(
        attention_rollout([two_heads], "mean")[0],
        torch.tensor([[0.875, 0.125, 0], [0, 1, 0], [0, 0.125, 0.875]]),
    )
    torch.testing.assert_close(
        attention_rollout([two_heads], "max")[0], torch.tensor([[0.8, 0.2, 0], [0, 1, 0], [0, 0.2, 0.8]])
    )
    torch.testing.assert_close(attention_rollout([two_heads], "min")[0], torch.eye(3))
    # discard_ratio 0.34 of 9 entries: the 3 lowest (.05, .15, .2) are zeroed before adding I
    fused = torch.tensor([[0.5, 0.3, 0.2], [0.15, 0.6, 0.25], [0.05, 0.35, 0.6]])
    out = attention_rollout([fused[None, None]], discard_ratio=0.34)[0]
    torch.testing.assert_close(out[0], torch.tensor([1.5 / 1.8, 0.3 / 1.8, 0.0]))
    torch.testing.assert_close(out[2], torch.tensor([0.0, 0.35 / 1.95, 1.6 / 1.95]))
    # the class token's attention to itself is kept even when it is the lowest
    low_cls = torch.tensor([[0.05, 0.5, 0.45], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6]])[None, None]
    assert attention_rollout([low_cls], discard_ratio=0.12)[0, 0, 0].item() == pytest.approx(1.05 / 2)
    # without that protection it is dropped: row 0 becomes [0 + 1, .5, .45] / 1.95
    dropped = attention_rollout([low_cls], discard_ratio=0.12, keep_class_token=False)[0, 0, 0]
    assert dropped.item() == pytest.approx(1 / 1.95)
    assert torch.equal(fuse_heads(two_heads, "max")[0], torch.maximum(torch.tensor(A1), torch.eye(3)))


def test_pure_functions_reject_bad_values():
    a = torch.full((1, 1, 3, 3), 1 / 3)
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        attention_rollout([a], "median")
    with pytest.raises(ValueError, match="discard_ratio must be in"):
        attention_rollout([a], discard_ratio=1.0)
    with pytest.raises(ValueError, match=r"\[B, heads, N, N\]"):
        attention_rollout([a[0]])
    with pytest.raises(ValueError, match="at least one"):
        attention_rollout([])
    with pytest.raises(ValueError, match="one gradient per attention"):
        transformer_relevance([a, a], [a])
    with pytest.raises(ValueError, match="at least one"):
        legrad_relevance([])


def test_no_class_token_uses_the_mean_over_query_rows():
    matrix = torch.arange(9.0).reshape(1, 3, 3)
    assert torch.equal(class_token_relevance(matrix, True), matrix[:, 0])
    assert torch.equal(class_token_relevance(matrix, False), torch.tensor([[3.0, 4.0, 5.0]]))


# ---------------------------------------------------------------------------------------------
# One set of weights in torchvision's, timm's and Hugging Face's ViT
# ---------------------------------------------------------------------------------------------
DIM, HEADS, MLP, CLASSES = 32, 2, 64, 5


def torchvision_vit(seed: int = 0, image_size: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(
        image_size=image_size, patch_size=16, num_layers=2, num_heads=HEADS, hidden_dim=DIM, mlp_dim=MLP,
        num_classes=CLASSES,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision zero-initialises the head
    nn.init.normal_(model.class_token, std=0.5)
    return model.eval()


def timm_vit_like(tv: nn.Module) -> nn.Module:
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=tv.image_size, patch_size=16, embed_dim=DIM, depth=2, num_heads=HEADS, mlp_ratio=MLP / DIM,
        qkv_bias=True, num_classes=CLASSES,
    ).eval()
    with torch.no_grad():
        model.patch_embed.proj.load_state_dict(tv.conv_proj.state_dict())
        model.cls_token.copy_(tv.class_token)
        model.pos_embed.copy_(tv.encoder.pos_embedding)
        for block, source in zip(model.blocks, tv.encoder.layers):
            block.norm1.load_state_dict(source.ln_1.state_dict())
            block.norm2.load_state_dict(source.ln_2.state_dict())
            block.attn.qkv.weight.copy_(source.self_attention.in_proj_weight)
            block.attn.qkv.bias.copy_(source.self_attention.in_proj_bias)
            block.attn.proj.load_state_dict(source.self_attention.out_proj.state_dict())
            block.mlp.fc1.load_state_dict(source.mlp[0].state_dict())
            block.mlp.fc2.load_state_dict(source.mlp[3].state_dict())
        model.norm.load_state_dict(tv.encoder.ln.state_dict())
        model.head.load_state_dict(tv.heads.head.state_dict())
    return model


def hf_vit_like(tv: nn.Module) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=tv.image_size, patch_size=16, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS,
        intermediate_size=MLP, layer_norm_eps=1e-6, hidden_act="gelu", num_labels=CLASSES, qkv_bias=True,
    )
    model = transformers.ViTForImageClassification(config).eval()
    vit = model.vit
    with torch.no_grad():
        vit.embeddings.patch_embeddings.projection.load_state_dict(tv.conv_proj.state_dict())
        vit.embeddings.cls_token.copy_(tv.class_token)
        vit.embeddings.position_embeddings.copy_(tv.encoder.pos_embedding)
        for layer, source in zip(vit.layers, tv.encoder.layers):
            attention = layer.attention
            weights = source.self_attention.in_proj_weight.chunk(3)
            biases = source.self_attention.in_proj_bias.chunk(3)
            for proj, w, b in zip((attention.q_proj, attention.k_proj, attention.v_proj), weights, biases):
                proj.weight.copy_(w)
                proj.bias.copy_(b)
            attention.o_proj.load_state_dict(source.self_attention.out_proj.state_dict())
            layer.layernorm_before.load_state_dict(source.ln_1.state_dict())
            layer.layernorm_after.load_state_dict(source.ln_2.state_dict())
            layer.mlp.fc1.load_state_dict(source.mlp[0].state_dict())
            layer.mlp.fc2.load_state_dict(source.mlp[3].state_dict())
        vit.layernorm.load_state_dict(tv.encoder.ln.state_dict())
        model.classifier.load_state_dict(tv.heads.head.state_dict())
    return model


def logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


@pytest.fixture(scope="module")
def three_vits():
    tv = torchvision_vit()
    models = {"torchvision": tv}
    for name, make in (("timm", timm_vit_like), ("hf", hf_vit_like)):
        try:
            models[name] = make(tv)
        except pytest.skip.Exception:  # optional package missing: its comparisons are left out
            pass
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = tv(x)
        for model in models.values():
            torch.testing.assert_close(logits(model(x)), reference, atol=1e-5, rtol=1e-5)
    return models, x


def captured(model, x, target=None):
    """(attentions, gradients of the target class's logit, logits) with the capture."""
    with capture_attention(model, differentiable=True) as record:
        out = logits(model(x))
    classes = out.argmax(1) if target is None else torch.full((x.shape[0],), target)
    score = out.gather(1, classes[:, None]).sum()
    return record.attentions, torch.autograd.grad(score, record.attentions), out


def test_same_weights_same_attention_and_gradients_in_three_libraries(three_vits):
    models, x = three_vits
    ref_attn, ref_grads, _ = captured(models["torchvision"], x, target=3)
    assert ref_attn[0].shape == (2, HEADS, 5, 5)
    assert all(bool(g.abs().sum() > 0) for g in ref_grads)
    for name, model in models.items():
        attn, grads, _ = captured(model, x, target=3)
        for a, b in zip(attn, ref_attn):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_torchvision_attention_gradients_match_an_explicit_forward_pass():
    """The zero-valued detour gives d(score)/dA exactly as a hand-written forward with explicit A."""
    model = torchvision_vit(seed=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    attn, grads, out = captured(model, x, target=1)

    tokens = model.conv_proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.class_token.expand(2, -1, -1), tokens], dim=1) + model.encoder.pos_embedding
    explicit = []
    for block in model.encoder.layers:
        mha = block.self_attention
        h = block.ln_1(tokens)
        q, k, v = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(2, 5, HEADS, DIM // HEADS).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1)
        explicit.append(a)
        tokens = tokens + mha.out_proj((a @ v).transpose(1, 2).reshape(2, 5, DIM))
        tokens = tokens + block.mlp(block.ln_2(tokens))
    score = model.heads(model.encoder.ln(tokens)[:, 0])
    torch.testing.assert_close(score, out, atol=1e-5, rtol=1e-5)
    expected = torch.autograd.grad(score[:, 1].sum(), explicit)
    for a, b in zip(attn, explicit):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_capture_keeps_outputs_and_restores_the_model(three_vits):
    models, x = three_vits
    for name, model in models.items():
        modules = find_attention_modules(model)
        fused = [getattr(m, "fused_attn", None) for m in modules]
        impl = [getattr(getattr(m, "config", None), "_attn_implementation", None) for m in modules]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            before = logits(model(x))
        with capture_attention(model, differentiable=True) as record:
            during = logits(model(x))
        atol = 0.0 if name == "torchvision" else 1e-5  # the explicit path of timm/HF rounds differently
        torch.testing.assert_close(during, before, atol=atol, rtol=atol)
        assert len(record.attentions) == 2
        with pytest.raises(RuntimeError, match="boom"), capture_attention(model):
            raise RuntimeError("boom")
        assert [getattr(m, "fused_attn", None) for m in modules] == fused, name
        assert [getattr(getattr(m, "config", None), "_attn_implementation", None) for m in modules] == impl
        for module in model.modules():
            assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert all(p.grad is None for p in model.parameters())


def test_torchvision_caller_still_gets_the_weights_it_asked_for():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        expected_avg = mha(x, x, x)[1]
        expected_heads = mha(x, x, x, need_weights=True, average_attn_weights=False)[1]
    with torch.no_grad(), capture_attention(mha, [mha]) as record:
        assert mha(x, x, x, need_weights=False)[1] is None
        torch.testing.assert_close(mha(x, x, x)[1], expected_avg)
        torch.testing.assert_close(mha(x, x, x, None, True, None, False)[1], expected_heads)
    assert len(record.attentions) == 3 and record.attentions[0].shape == (1, 2, 4, 4)


def test_prefix_tokens_and_grid_for_distillation_and_register_tokens():
    VisionTransformerDistilled = timm.models.deit.VisionTransformerDistilled
    VisionTransformer = timm.models.vision_transformer.VisionTransformer

    torch.manual_seed(0)
    deit = VisionTransformerDistilled(img_size=(32, 48), patch_size=16, embed_dim=32, depth=2, num_heads=2).eval()
    registers = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, reg_tokens=4).eval()
    for model, prefix, size in ((deit, 2, (32, 48)), (registers, 5, (32, 32))):
        with torch.no_grad(), capture_attention(model) as record:
            model(torch.randn(1, 3, *size))
        assert record.prefix_tokens == prefix == num_prefix_tokens(model)
        n = record.attentions[0].shape[-1]
        relevance = torch.arange(float(n))[None]
        grid = relevance_to_grid(relevance, size, record.prefix_tokens)
        h, w = size[0] // 16, size[1] // 16
        torch.testing.assert_close(grid, torch.arange(float(prefix), float(n)).reshape(1, h, w))
    no_cls = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, class_token=False,
                               global_pool="avg")
    assert not has_class_token(no_cls) and has_class_token(deit)


def test_modules_that_are_not_transformers_are_refused():
    with pytest.raises(ValueError, match=r"no self-attention module in ResNet.*GradCAM"):
        find_attention_modules(torchvision.models.resnet18(weights=None))
    with pytest.raises(ValueError, match="no self-attention module in Sequential"):
        with capture_attention(nn.Sequential(nn.Linear(2, 2))):
            pass
    model = torchvision_vit()
    with pytest.raises(ValueError, match="not a supported attention module"):
        with capture_attention(model, [model.conv_proj]):
            pass
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        find_attention_modules("vit")
    with pytest.raises(RuntimeError, match="did not run"):
        stack_by_module(AttentionRecord(), find_attention_modules(model))


# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_rollout_matches_fast_vit_rollout(three_vits, head_fusion):
    """fast-vit-rollout hooks timm's ``attn_drop``, so it needs the explicit path switched on by hand."""
    models, x = three_vits
    model = timm_vit_like(models["torchvision"])
    with torch.no_grad(), capture_attention(model) as record:
        model(x)
    ours = attention_rollout(record.attentions, head_fusion)
    try:
        from fast_vit_rollout import ViTAttentionRollout
    except ImportError:  # optional oracle: skip only this comparison
        pytest.skip("fast-vit-rollout is not installed (README, Test: pip install --no-deps fast-vit-rollout)")
    for block in model.blocks:
        block.attn.fused_attn = False
    theirs = ViTAttentionRollout(model, head_fusion=head_fusion, discard_ratio=0.0)(x)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The method classes
# ---------------------------------------------------------------------------------------------
def raw_map(cam, x, targets=None):
    """The method's map before scaling, through the base's public stages."""
    return cam.layer_maps(cam.capture(cam.prepare_input(x), targets), False)[0]


def test_classes_give_the_golden_maps_on_the_toy_transformer():
    from camlib import AttentionRollout, LeGrad, TransformerAttribution
    from camlib.utils.model_targets import ClassifierOutputTarget

    model = ToyViT()
    target = [ClassifierOutputTarget(0)]
    torch.testing.assert_close(raw_map(AttentionRollout(model), toy_input()), torch.tensor([[ROLLOUT_PATCHES]]))
    torch.testing.assert_close(
        raw_map(TransformerAttribution(model), toy_input(), target), torch.tensor([[RELEVANCE_ROW[1:]]])
    )
    legrad = LeGrad(model, [], score_projection=lambda z: model.head(z.mean(dim=1)))
    torch.testing.assert_close(raw_map(legrad, toy_input(), target), torch.tensor([[LEGRAD_KEYS[1:]]]))
    # the whole call: scaled to [0, 1] per image and resized to the 16 x 32 input
    maps = TransformerAttribution(model)(toy_input(), target)
    assert maps.shape == (1, 16, 32) and maps.min() == 0.0 and maps.max() == pytest.approx(1.0, abs=1e-6)
    assert maps[0, :, :8].max() < 0.05 and maps[0, :, 24:].min() > 0.95  # patch 2 is the more relevant


@pytest.mark.parametrize("method", ["AttentionRollout", "TransformerAttribution", "LeGrad"])
def test_same_maps_from_torchvision_timm_and_hugging_face(three_vits, method):
    import camlib
    from camlib.utils.model_targets import ClassifierOutputTarget

    models, x = three_vits
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    maps = {name: getattr(camlib, method)(model)(x, targets) for name, model in models.items()}
    reference = maps["torchvision"]
    assert reference.shape == (2, 32, 32) and all(m.max() - m.min() > 0.5 for m in reference)
    for name, value in maps.items():
        assert abs(value - reference).max() < 1e-4, name


def test_rollout_options_and_class_agnostic_default_targets(three_vits):
    from camlib import AttentionRollout

    models, x = three_vits
    model = models["timm"] if "timm" in models else timm_vit_like(models["torchvision"])
    plain = AttentionRollout(model)(x)
    assert plain.shape == (2, 32, 32)
    different = AttentionRollout(model, head_fusion="min", discard_ratio=0.9)(x)
    assert abs(different - plain).max() > 1e-3
    smooth = AttentionRollout(model)(x, aug_smooth=True)
    assert smooth.shape == (2, 32, 32) and smooth.max() <= 1.0
    with pytest.raises(ValueError, match="head_fusion must be one of"):
        AttentionRollout(model, head_fusion="median")
    with pytest.raises(ValueError, match=r"discard_ratio must be a number in \[0, 1\)"):
        AttentionRollout(model, discard_ratio=1.5)
    with pytest.raises(ValueError, match="does not support per_layer"):
        AttentionRollout(model)(x, per_layer=True)


def test_distillation_and_register_tokens_through_the_classes():
    from camlib import AttentionRollout, LeGrad, TransformerAttribution

    VisionTransformerDistilled = timm.models.deit.VisionTransformerDistilled
    VisionTransformer = timm.models.vision_transformer.VisionTransformer

    torch.manual_seed(0)
    deit = VisionTransformerDistilled(img_size=(32, 64), patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                      num_classes=3).eval()
    registers = VisionTransformer(img_size=48, patch_size=16, embed_dim=32, depth=2, num_heads=2, reg_tokens=4,
                                  num_classes=3).eval()
    for model, size in ((deit, (32, 64)), (registers, (48, 48))):
        x = torch.randn(2, 3, *size)
        for cls in (AttentionRollout, TransformerAttribution, LeGrad):
            cam = cls(model)
            grid = raw_map(cam, x)
            assert grid.shape == (2, size[0] // 16, size[1] // 16), (cls.__name__, grid.shape)
            maps = cam(x)
            assert maps.shape == (2, *size) and bool((maps.max(axis=(1, 2)) > 0.99).all()), cls.__name__


def test_legrad_matches_torchcam():
    torchcam = pytest.importorskip("torchcam.methods")
    from camlib import LeGrad
    from camlib.utils.image import scale_cam_image
    from camlib.utils.model_targets import ClassifierOutputTarget

    model = torchvision_vit(seed=5, image_size=48)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    classes = [2, 4]
    blocks = list(model.encoder.layers)
    with torchcam.LeGrad(model, blocks) as extractor:
        theirs = extractor(class_idx=classes, scores=model(x))[0].detach()  # [2, 3, 3], min-max scaled
    ours = LeGrad(model, blocks)
    grid = raw_map(ours, x, [ClassifierOutputTarget(c) for c in classes])
    shifted = grid - grid.amin(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(shifted / (shifted.amax(dim=(1, 2), keepdim=True) + 1e-8), theirs, atol=1e-5, rtol=0)
    maps = ours(x, [ClassifierOutputTarget(c) for c in classes])
    expected = scale_cam_image(scale_cam_image(theirs, (48, 48))).numpy()  # resize, then the layer mean rescaled
    assert abs(maps - expected).max() < 1e-4


def test_legrad_blocks_default_and_errors(three_vits):
    from camlib import LeGrad

    models, _ = three_vits
    tv = models["torchvision"]
    assert LeGrad(tv).blocks == list(tv.encoder.layers)[-2:]
    assert LeGrad(tv, [tv.encoder.layers[1]]).attention_modules == [tv.encoder.layers[1].self_attention]
    assert LeGrad(tv, [tv.encoder.layers[0].ln_1]).blocks == [tv.encoder.layers[0]]  # a layer names its block
    with pytest.raises(ValueError, match="holds 2"):
        LeGrad(tv, [tv.encoder])
    with pytest.raises(ValueError, match="holds 2"):
        LeGrad(tv, [tv.encoder.ln])  # after the blocks: its ancestors hold both
    with pytest.raises(ValueError, match="score_projection="):
        LeGrad(ToyViT())
    with pytest.raises(TypeError, match="score_projection must be a function"):
        LeGrad(tv, score_projection="head")


@pytest.mark.parametrize("method", ["AttentionRollout", "TransformerAttribution", "LeGrad"])
def test_a_cnn_or_a_model_without_attention_is_refused(method):
    import camlib

    cls = getattr(camlib, method)
    with pytest.raises(ValueError, match=r"no self-attention module in ResNet.*torchvision's VisionTransformer"):
        cls(torchvision.models.resnet18(weights=None), [])
    with pytest.raises(ValueError, match="no self-attention module in Sequential"):
        cls(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), [])


@pytest.mark.parametrize("method", ["AttentionRollout", "TransformerAttribution", "LeGrad"])
def test_the_model_is_left_as_it_was(three_vits, method):
    from conftest import assert_model_untouched, model_snapshot

    import camlib

    models, x = three_vits
    for name, model in models.items():
        model.train()  # training flags must come back too
        before = model_snapshot(model)
        fused = [getattr(m, "fused_attn", None) for m in find_attention_modules(model)]
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        cam = getattr(camlib, method)(model)
        cam(x)

        def broken(*args):
            raise RuntimeError("failed mid-way")

        if cam.capabilities.gradients:  # a target that raises, after the forward pass
            with pytest.raises(RuntimeError, match="failed mid-way"):
                cam(x, [broken, broken])
        handle = transformer_blocks(model)[-1].register_forward_hook(broken)  # raises inside the forward pass
        try:
            with pytest.raises(RuntimeError, match="failed mid-way"):
                cam(x)
        finally:
            handle.remove()
        assert_model_untouched(model, before)
        assert [getattr(m, "fused_attn", None) for m in find_attention_modules(model)] == fused, name
        assert getattr(getattr(model, "config", None), "_attn_implementation", None) == impl, name
        model.eval()


def test_registered_with_their_capabilities():
    from camlib.registry import get_method, make_cam

    for name, cls_name, gradients in (
        ("attentionrollout", "AttentionRollout", False),
        ("transformerattribution", "TransformerAttribution", True),
        ("legrad", "LeGrad", True),
    ):
        info = get_method(name)
        assert info.cls.__name__ == cls_name
        caps = info.capabilities
        assert caps.needs_attention and caps.own_layers and not caps.volumetric and not caps.eigen_smooth
        assert caps.gradients is gradients
        model = torchvision_vit()
        assert type(make_cam(name, model, [model.encoder.layers[0]])).__name__ == cls_name


def test_zero_gradients_warn_instead_of_a_silent_blank_map():
    from camlib import TransformerAttribution

    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    ).eval()  # torchvision's zero-initialised head: every logit is constant
    with pytest.warns(UserWarning, match="gradient of the target score with respect to every attention"):
        TransformerAttribution(model)(torch.randn(1, 3, 32, 32))


def test_windowed_attention_is_refused():
    from camlib import AttentionRollout

    torch.manual_seed(0)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=64, embed_dim=32, depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8), window_size=2, num_classes=3,
    ).eval()
    before = [m.fused_attn for m in find_attention_modules(swin)]
    with pytest.raises(ValueError, match=r"windowed attention \(WindowAttention, as in Swin"):
        AttentionRollout(swin)
    with pytest.raises(ValueError, match="windowed attention, as in Swin"):  # caught at run time too
        with torch.no_grad():
            attention_pass(swin, find_attention_modules(swin), torch.randn(1, 3, 64, 64), lambda out: [],
                           gradients=False)
    assert [m.fused_attn for m in find_attention_modules(swin)] == before


def test_legrad_matches_the_authors_legrad_torch(tmp_path):
    """The authors' package explains OpenCLIP models: a tiny random CLIP ViT, two text prompts."""
    import json

    from camlib import LeGrad
    from camlib.utils.model_targets import ClassifierOutputTarget

    try:
        import open_clip
        from legrad import LeWrapper
    except ImportError:  # optional oracle (pip install legrad-torch): skip only this comparison
        pytest.skip(
            "legrad-torch and open_clip_torch 2.23 are not installed (README, Test: "
            "pip install --no-deps legrad-torch open_clip_torch==2.23.0 ftfy regex einops)"
        )
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "camlib-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "camlib-tiny-clip.json")
    torch.manual_seed(0)
    ours_clip = open_clip.create_model("camlib-tiny-clip", pretrained=None).eval()
    torch.manual_seed(0)
    theirs_clip = open_clip.create_model("camlib-tiny-clip", pretrained=None).eval()
    text = F.normalize(torch.randn(2, 16, generator=torch.Generator().manual_seed(2)), dim=-1)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    theirs = LeWrapper(theirs_clip, layer_index=-2).compute_legrad_clip(text, image=x)[0].detach()  # [2, 32, 32]

    class ClipScores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = ours_clip.visual

        def forward(self, image):
            return F.normalize(self.visual(image), dim=-1) @ text.T

    visual = ours_clip.visual
    model = ClipScores().eval()

    def projection(tokens):  # open_clip 2.23 blocks return [tokens, batch, width]
        return F.normalize(visual.ln_post(tokens.mean(dim=0)) @ visual.proj, dim=-1) @ text.T

    cam = LeGrad(model, [], score_projection=projection)
    grid = raw_map(cam, x.repeat(2, 1, 1, 1), [ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
    upsampled = F.interpolate(grid[:, None], scale_factor=16, mode="bilinear")[:, 0]
    lo = upsampled.amin(dim=(1, 2), keepdim=True)
    hi = upsampled.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close((upsampled - lo) / (hi - lo), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["AttentionRollout", "TransformerAttribution", "LeGrad"])
def test_batch_equals_single_images_and_half_precision(three_vits, method):
    import camlib
    from camlib.utils.model_targets import ClassifierOutputTarget

    models, x = three_vits
    cls = getattr(camlib, method)
    model = models["timm"] if "timm" in models else timm_vit_like(models["torchvision"])
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    batch = cls(model)(x, targets)
    single = [cls(model)(x[i : i + 1], [targets[i]])[0] for i in range(2)]
    assert abs(batch - np.stack(single)).max() < 2e-4
    half = torchvision_vit().to(torch.bfloat16)
    reference = cls(torchvision_vit())(x, targets)
    maps = cls(half)(x, targets)
    assert maps.dtype == np.float32 and np.isfinite(maps).all()
    assert abs(maps - reference).mean() < 0.05


def test_two_threads_on_one_model(three_vits):
    """Each call records its own thread's attention; the switches come back once both are done."""
    from concurrent.futures import ThreadPoolExecutor

    from camlib import TransformerAttribution
    from camlib.utils.model_targets import ClassifierOutputTarget

    models, x = three_vits
    for name, model in models.items():
        cams = [TransformerAttribution(model) for _ in range(2)]
        inputs = [x, x.flip(-1)]
        targets = [[ClassifierOutputTarget(0)] * 2, [ClassifierOutputTarget(3)] * 2]
        expected = [cam(i, t) for cam, i, t in zip(cams, inputs, targets)]
        with ThreadPoolExecutor(2) as pool:
            for _ in range(3):
                got = list(pool.map(lambda cam, i, t: cam(i, t), cams, inputs, targets))
                for g, e in zip(got, expected):
                    assert abs(g - e).max() < 1e-5, name
        assert all(getattr(m, "fused_attn", True) for m in find_attention_modules(model)), name
        assert getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") == "sdpa", name
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["AttentionRollout", "TransformerAttribution", "LeGrad"])
def test_on_the_gpu_the_maps_equal_the_cpu_ones(method):
    import camlib
    from camlib.utils.model_targets import ClassifierOutputTarget

    tv = torchvision_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    cls = getattr(camlib, method)
    expected = cls(tv)(x, targets)
    for model in (tv, timm_vit_like(tv)):
        got = cls(model.cuda())(x.cuda(), targets)
        assert abs(got - expected).max() < 1e-3
