"""Losses and CutMix against the official `utils/train_utils.py` (golden `small_loss_cutmix`)."""
import numpy as np
import pytest
import torch

from semivl.losses import (CONF_MODES, confidence_weighted_loss, cutmix_img_, cutmix_mask, pixel_ce,
                           pseudo_labels)

T = torch.from_numpy


@pytest.fixture(scope='module')
def g(golden): return golden('small_loss_cutmix')


def test_pseudo_labels_and_cutmix_maps(g):
    conf_w, mask_w = pseudo_labels(T(g['pred_w']))
    conf_o, mask_o = pseudo_labels(T(g['pred_w_other']))
    np.testing.assert_allclose(conf_w.numpy(), g['conf_w'], atol=1e-6)
    np.testing.assert_array_equal(mask_w.numpy(), g['mask_w'])
    box = T(g['cutmix_box'])
    np.testing.assert_array_equal(cutmix_mask(mask_w, mask_o, box).numpy(), g['mask_w_mixed'])
    np.testing.assert_allclose(cutmix_mask(conf_w, conf_o, box).numpy(), g['conf_w_mixed'], atol=1e-6)
    np.testing.assert_array_equal(cutmix_mask(T(g['ignore_mask']), T(g['ignore_mask_other']), box).numpy(),
                                  g['ignore_mask_mixed'])


def test_pixel_ce(g):
    ce = pixel_ce(T(g['pred_s']), T(g['mask_w_mixed']))
    np.testing.assert_allclose(ce.numpy(), g['ce_pixel'], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('mode', CONF_MODES)
@pytest.mark.parametrize('thr', ['095', '05'])
def test_confidence_weighted_loss(g, mode, thr):
    out = confidence_weighted_loss(T(g['ce_pixel']), T(g['conf_w_mixed']), T(g['ignore_mask_mixed']),
                                   mode=mode, thresh=float('0.' + thr[1:]))
    np.testing.assert_allclose(out.item(), g[f'loss_{mode}_thr{thr}'][0], rtol=1e-6, atol=1e-6)


def test_threshold_is_inclusive(g):
    out = confidence_weighted_loss(T(g['raw_loss']), T(g['raw_conf']), T(g['ignore_mask']), 'pixelwise', 0.95)
    assert (g['raw_conf'] == np.float32(0.95)).any()            # the case is really exercised
    np.testing.assert_allclose(out.item(), g['raw_loss_pixelwise_thr095'][0], rtol=1e-6, atol=1e-6)
    strict = confidence_weighted_loss(T(g['raw_loss']), T(np.nextafter(g['raw_conf'], 0)), T(g['ignore_mask']))
    assert abs(strict.item() - out.item()) > 1e-4               # `>` instead of `>=` would be caught


def test_cutmix_img_in_place(g):
    img = T(g['cutmix_img']).clone()
    out = cutmix_img_(img, T(g['cutmix_img_mix']), T(g['cutmix_box']))
    assert out.data_ptr() == img.data_ptr()
    np.testing.assert_array_equal(img.numpy(), g['cutmix_img_out'])
