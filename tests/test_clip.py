"""ClipBackbone against the official MaskClipVisionTransformer goldens (random ViT-B/16 weights of recipe.py)."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from semivl.clip import (ClipBackbone, frozen_clip_encoder, load_clip, load_official_backbone, official_to_visual,
                         resize_pos_embed, visual_to_official)
from conftest import GOLDEN

pytestmark = pytest.mark.slow


def _recipe():
    spec = importlib.util.spec_from_file_location('golden_recipe', GOLDEN/'recipe.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def fingerprint():
    return json.loads((GOLDEN/'maskclip_weights_fingerprint.json').read_text())


@pytest.fixture(scope='module')
def recipe_sd():
    return {k: torch.from_numpy(v) for k, v in _recipe().openai_visual_state_dict().items()}


@pytest.fixture(scope='module')
def clip_vitb16(recipe_sd):
    "open_clip ViT-B-16 with the recipe's random image tower (text tower left at its init)"
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match='missing'):
        clip, _ = load_clip('ViT-B-16', weights=recipe_sd, strict=False)
    return clip


@pytest.fixture(scope='module')
def backbone512(clip_vitb16):
    import copy
    return ClipBackbone(copy.deepcopy(clip_vitb16.visual), img_size=512).eval()


def _check_fp(sd, fp, what):
    assert set(sd) == set(fp), f"{what}: key sets differ: {set(sd) ^ set(fp)}"
    for k, rec in fp.items():
        a = sd[k].detach().double().numpy()
        assert list(a.shape) == rec['shape'], k
        np.testing.assert_allclose(a.sum(), rec['sum'], rtol=1e-5, atol=1e-4, err_msg=k)
        np.testing.assert_allclose((a**2).sum(), rec['sumsq'], rtol=1e-6, err_msg=k)
        np.testing.assert_allclose(a.ravel()[:4], rec['first4'], rtol=0, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(a.ravel()[-1], rec['last'], rtol=0, atol=1e-7, err_msg=k)


def test_recipe_weights_match_fingerprint(clip_vitb16, fingerprint):
    "The open_clip tower loaded from recipe.py equals the fingerprinted weights (OpenAI names = open_clip names)"
    sd = {f'visual.{k}': v for k, v in clip_vitb16.visual.state_dict().items()}
    _check_fp(sd, fingerprint['openai_visual'], 'openai_visual')
    assert list(fingerprint['openai_visual']) == [f'visual.{k}' for k in clip_vitb16.visual.state_dict()]


def test_converted_backbone_layout_matches_fingerprint(clip_vitb16, fingerprint):
    "visual_to_official reproduces the reference's convert_clip_weights.py --backbone output"
    osd = visual_to_official(clip_vitb16.visual.state_dict())
    conv = {(k if k == 'proj.weight' else f'backbone.{k}'): (v[:, :, 0, 0] if k == 'proj.weight' else v)
            for k, v in osd.items()}
    _check_fp(conv, fingerprint['converted_backbone_ckpt'], 'converted_backbone_ckpt')


def test_pos_embed_resized_512(backbone512, golden):
    g = golden('maskclip_pos_embed_resized512')
    got = backbone512.visual.positional_embedding.detach()[None].numpy()
    np.testing.assert_allclose(got, g['pos_embed'], rtol=0, atol=1e-6)


def _layer_outputs(backbone, idxs):
    outs, hooks = {}, []
    for i in idxs:
        blk = backbone.visual.transformer.resblocks[i]
        hooks.append(blk.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.detach())))
    return outs, hooks


def test_backbone_224_runtime_pos_resize(backbone512, golden):
    "224 input: pos-embed 32x32 -> 14x14 at forward; value-path features, E, global embedding, token outputs"
    g = golden('maskclip_backbone_in224')
    img = torch.from_numpy(g['img'].astype(np.float32))
    for fused in (True, False):     # the default fused blocks, and the official order (open_clip blocks, hooks fire)
        backbone512.fused = fused
        outs, hooks = _layer_outputs(backbone512, (0, 4, 11))
        with torch.no_grad():
            (v0, v4, E), glob = backbone512(img)
            (w0, w4, E2), none = backbone512(img, with_global=False)
        for h in hooks: h.remove()
        backbone512.fused = True
        np.testing.assert_allclose(v0.numpy(), g['feat_v0'], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(v4.numpy(), g['feat_v4'], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(E.numpy(), g['clip_embed'], rtol=0, atol=1e-5)
        np.testing.assert_allclose(glob.numpy(), g['global_embed'], rtol=0, atol=1e-5)
        assert none is None
        for a, b in zip((v0, v4, E), (w0, w4, E2)): np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6)
        if not fused:
            for i in (0, 4, 11):
                np.testing.assert_allclose(outs[i].numpy(), g[f'debug_layer{i}_x'], rtol=1e-4, atol=1e-4)


def test_backbone_512(backbone512, golden):
    g = golden('maskclip_backbone_in512')
    with torch.no_grad():
        (v0, v4, E), glob = backbone512(torch.from_numpy(g['img'].astype(np.float32)))
    np.testing.assert_allclose(E.numpy(), g['clip_embed'], rtol=0, atol=1e-5)
    np.testing.assert_allclose(glob.numpy(), g['global_embed'], rtol=0, atol=1e-5)
    np.testing.assert_allclose(v0[:, :, ::4, ::4].numpy(), g['feat_v0_stride4'], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(v4[:, :, ::4, ::4].numpy(), g['feat_v4_stride4'], rtol=1e-4, atol=1e-4)


def test_frozen_clip_encoder_same_embedding(clip_vitb16, backbone512, golden):
    "The MaskCLIP twin (no skips) returns the same E as the backbone, and shares the frozen tensors"
    import copy
    v = copy.deepcopy(clip_vitb16.visual)
    enc = frozen_clip_encoder(v, img_size=512)
    g = golden('maskclip_backbone_in224')
    with torch.no_grad():
        (E,), _ = enc(torch.from_numpy(g['img'].astype(np.float32)))
    np.testing.assert_allclose(E.numpy(), g['clip_embed'], rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_ftap_trainable_count(backbone512):
    "ftap on ViT-B/16 at 512: 29,135,616 trainable (pos-embed 1025x768 + attention) of 86.8M"
    import copy
    bb = copy.deepcopy(backbone512).lock()
    n_train = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in bb.parameters())
    assert n_train == 29_135_616
    # same parameters as the official ViT: pos 787,200 + cls 768 + patch 589,824 + ln_pre/post 3,072
    # + proj 393,216 + 12 blocks x 7,087,872 = 86,828,544 (the spec's "~86.8M")
    assert n_all == 86_828_544, n_all
    names = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert names == {'visual.positional_embedding'} | {n for n, _ in bb.named_parameters() if '.attn.' in n}


def test_official_backbone_roundtrip(backbone512):
    "official layout -> adapter -> official layout is the identity; CLIP-resolution pos-embed is resized at load"
    import copy
    sd = visual_to_official(backbone512.visual.state_dict())
    assert sd['pos_embed'].shape == (1, 1025, 768) and sd['proj.weight'].shape == (512, 768, 1, 1)
    bb = copy.deepcopy(backbone512)
    with torch.no_grad():
        for p in bb.parameters(): p.zero_()
    load_official_backbone(bb, sd)
    back = visual_to_official(bb.visual.state_dict())
    assert set(back) == set(sd)
    for k in sd: assert torch.equal(back[k], sd[k]), k
    with pytest.raises(RuntimeError):
        load_official_backbone(bb, {k: v for k, v in sd.items() if k != 'ln0.weight'})
