"""Evaluation against the official `predict`/`intersectionAndUnion` (goldens `small_sliding_window`, `small_iou`)."""
import numpy as np
import pytest
import torch

from semivl.evaluate import ConfusionMatrix, intersection_and_union, zegclip_sliding_window

T = torch.from_numpy


@pytest.fixture(scope='module')
def sw(golden):
    g = golden('small_sliding_window')
    conv = torch.nn.Conv2d(3, 21, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(T(g['conv_weight'])); conv.bias.copy_(T(g['conv_bias']))
    return g, conv


@pytest.mark.parametrize('case', ['a', 'b'])
@pytest.mark.parametrize('window_batch', [1, 16])
def test_zegclip_sliding_window(sw, case, window_batch):
    g, conv = sw
    with torch.no_grad():
        logits = zegclip_sliding_window(conv, T(g[f'{case}_img']), tuple(g[f'{case}_mask_shape'][1:]),
                                        crop=int(g['cfg_crop_size'][0]), stride=int(g['cfg_stride'][0]),
                                        window_batch=window_batch)
    np.testing.assert_allclose(logits.numpy(), g[f'{case}_logits'], atol=1e-5)
    pred = logits.argmax(1).numpy()
    assert (pred != g[f'{case}_pred']).mean() < 1e-3          # ties only


def test_align_corners_quirk(sw):
    "the final resize uses align_corners=True: the reference logits differ from an align_corners=False resize"
    g, conv = sw
    with torch.no_grad():
        full = zegclip_sliding_window(conv, T(g['a_img']), None, crop=64, stride=53)
        wrong = torch.nn.functional.interpolate(full, size=(72, 108), mode='bilinear', align_corners=False)
    assert np.abs(wrong.numpy() - g['a_logits']).max() > 1e-2


def test_intersection_and_union(golden):
    g = golden('small_iou')
    K = int(g['K'][0])
    i, u, t = intersection_and_union(g['output'], g['target'], K)
    for got, key in zip((i, u, t), ('area_intersection', 'area_union', 'area_target')):
        np.testing.assert_array_equal(got, g[key])
    assert g['area_target'][20] == 0
    r = ConfusionMatrix(K).update(T(g['output'][0]), T(g['target'][0])).update(T(g['output'][1]), T(g['target'][1])).compute()
    np.testing.assert_array_equal(r['area_intersection'], g['area_intersection'])
    np.testing.assert_array_equal(r['area_union'], g['area_union'])
    np.testing.assert_array_equal(r['area_target'], g['area_target'])
    iou = g['area_intersection'] / (g['area_union'] + 1e-10) * 100
    np.testing.assert_allclose(r['iou'], iou, rtol=1e-12)
    np.testing.assert_allclose(r['miou'], iou.mean(), rtol=1e-12)      # mean over all K classes
