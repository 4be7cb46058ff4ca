"""VLGHead against the official vlg_head goldens (weights of vlg_head_params.npz loaded under the official keys)."""
import numpy as np
import pytest
import torch

from semivl.decoder import VLGHead, ConvSkipEncoder

TOL = dict(rtol=1e-4, atol=1e-4)  # README: head logits


def _t(a): return torch.from_numpy(np.asarray(a).astype(np.float32))


@pytest.fixture(scope='module')
def head_params():
    with np.load(__import__('conftest').GOLDEN/'vlg_head_params.npz') as z:
        return {k: _t(z[k]) for k in z.files}


def _head(params, img_size):
    head = VLGHead(21, img_size=img_size).eval()
    res = head.load_state_dict(params, strict=True)   # official key names, no rename table
    assert not res.missing_keys and not res.unexpected_keys
    return head


def _run(head, g, concept_to_class=None):
    with torch.no_grad():
        logits = head(_t(g['feat2']), _t(g['text']), [_t(g['feat1']), _t(g['feat0'])], concept_to_class)
        return logits, head.resize_output(logits, (head.img_size, head.img_size))


def test_params_cover_official_state_dict(head_params):
    assert set(head_params) == set(VLGHead(21).state_dict())
    assert sum(v.numel() for v in head_params.values()) == 2_217_185


def test_head_crop512(head_params, golden):
    g = golden('vlg_head_crop512')
    logits, masks = _run(_head(head_params, 512), g)
    np.testing.assert_allclose(logits.numpy(), g['logits'], **TOL)
    np.testing.assert_allclose(masks[:, :, ::8, ::8].numpy(), g['pred_masks_stride8'], **TOL)
    np.testing.assert_allclose(masks.double().sum().item(), g['pred_masks_sum'][0], rtol=1e-4)


def test_head_crop128_b2_with_intermediates(head_params, golden):
    g = golden('vlg_head_crop128_b2')
    head = _head(head_params, 128)
    dbg = {}
    def keep(name, use_input=False):
        return lambda m, a, o: dbg.__setitem__(name, (a[0] if use_input else o).detach().clone())
    hooks = [head.conv1.register_forward_hook(keep('conv1_in', True)), head.aspp.register_forward_hook(keep('aspp')),
             head.text_proj.register_forward_hook(keep('text_proj')),
             head.layers[0].register_forward_hook(keep('layer0')), head.layers[1].register_forward_hook(keep('layer1')),
             head.skip_proj[0].register_forward_hook(keep('skip_proj0')),
             head.skip_proj[1].register_forward_hook(keep('skip_proj1'))]
    logits, masks = _run(head, g)
    for h in hooks: h.remove()
    B, N = 2, 21
    np.testing.assert_allclose(dbg['conv1_in'].numpy(), g['debug_conv1_in'], rtol=0, atol=1e-6)
    np.testing.assert_allclose(dbg['aspp'].numpy(), g['debug_aspp'], **TOL)
    # our text projection runs once on (N, D) and is broadcast over the batch
    np.testing.assert_allclose(dbg['text_proj'].expand(B, N, -1).numpy(), g['debug_text_proj'], **TOL)
    for i in (0, 1):  # ours (B*N, C, h, w) -> official 'b c n h w'
        ours = dbg[f'layer{i}'].view(B, N, 128, 8, 8).permute(0, 2, 1, 3, 4)
        np.testing.assert_allclose(ours.numpy(), g[f'debug_layer{i}'], **TOL)
    np.testing.assert_allclose(dbg['skip_proj0'].numpy(), g['debug_skip_proj0'], **TOL)
    np.testing.assert_allclose(dbg['skip_proj1'].numpy(), g['debug_skip_proj1'], **TOL)
    np.testing.assert_allclose(logits.numpy(), g['logits'], **TOL)
    np.testing.assert_allclose(masks.numpy(), g['pred_masks'], **TOL)


def test_head_concepts(head_params, golden):
    "98 concept rows through the head, max-aggregated to 21 classes at stride 4 before the resize"
    g = golden('vlg_head_concept')
    logits, masks = _run(_head(head_params, 128), g, torch.from_numpy(g['concept_to_class']))
    np.testing.assert_allclose(logits.numpy(), g['logits'], **TOL)
    np.testing.assert_allclose(masks.numpy(), g['pred_masks'], **TOL)


def test_double_resize_non_square():
    "Non-square inputs: logits go to img_size x img_size first, then to the input size (two bilinear resizes)"
    head = VLGHead(2, img_size=64, text_in_channels=8, skip_in_channels=(4, 4))
    x = torch.randn(1, 2, 16, 12)
    out = head.resize_output(x, (40, 30))
    F = torch.nn.functional
    two = F.interpolate(F.interpolate(x, (64, 64), mode='bilinear', align_corners=False), (40, 30), mode='bilinear',
                        align_corners=False)
    one = F.interpolate(x, (40, 30), mode='bilinear', align_corners=False)
    assert torch.equal(out, two) and not torch.allclose(out, one)


def test_skr04_head_and_conv_encoder_shapes():
    "Cityscapes variant: skips (v_4, ResNet stage 1) at stride 16 and 4; official parameter counts"
    head = VLGHead(19, 801, skip_in_channels=(768, 256), skip_channels=(32, 32))
    enc = ConvSkipEncoder()
    assert sum(p.numel() for p in head.parameters()) == 2_176_225
    assert sum(p.numel() for p in enc.parameters()) == 244_576
    sd = head.state_dict()
    assert sd['skip_proj.1.0.weight'].shape == (32, 256, 3, 3) and sd['up2.up.weight'].shape == (64, 32, 2, 2)
    img = torch.randn(1, 3, 96, 96)
    (c1,) = enc(img)
    assert c1.shape == (1, 256, 24, 24)
    with torch.no_grad():
        out = head(torch.randn(1, 512, 6, 6), torch.randn(19, 512), [torch.randn(1, 768, 6, 6), c1])
    assert out.shape == (1, 19, 24, 24)
