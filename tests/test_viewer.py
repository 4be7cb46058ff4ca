"""Headless tests of the pseudo-label viewer: build the widget, drive every control, assert on the displayed arrays."""
import io
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semivl.core import IGNORE_INDEX
from semivl.viewer import (AUGS, PANELS, PseudoLabelViewer, ViewerModel, ViewerState, ViewSettings, image_stats,
                           panel_arrays, plot_panels)
from semivl.panels import overlay, training_target

OVERLAY_PANELS = ('guidance', 'student', 'kept', 'target')  # panels that draw class colours over the input


def stub_model(n_classes=4, dim=8, seed=0, student=True):
    "A 'CLIP' = fixed random projection of 4x4-pooled pixels, a 'student' = 1x1 conv with large weights"
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(dim, 3, generator=g)
    clip_dense = lambda img: F.normalize(torch.einsum('dc,bchw->bdhw', proj, F.avg_pool2d(img, 4)), dim=1)
    texts = {'single': F.normalize(torch.randn(n_classes, dim, generator=g), dim=1),
             'definitions': F.normalize(torch.randn(n_classes, dim, generator=g), dim=1),
             'concepts': F.normalize(torch.randn(2 * n_classes, dim, generator=g), dim=1)}
    net = None
    if student:
        net = torch.nn.Conv2d(3, n_classes, 1)
        torch.nn.init.normal_(net.weight, std=1.5, generator=g)
    return ViewerModel(clip_dense, texts, net, {'concepts': torch.arange(2 * n_classes) // 2})


def fake_images(n=5, h=64, w=64, n_classes=4, seed=0, with_gt=True):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        gt = rng.integers(0, n_classes, (h, w)).astype(np.uint8)
        gt[:2] = IGNORE_INDEX
        out.append((img, gt if with_gt else None))
    return out


@pytest.fixture
def viewer():
    return PseudoLabelViewer(fake_images(), stub_model(), classes=['bg', 'a', 'b', 'c'])


def test_overlay_hides_exactly_the_toggled_class():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (20, 30)).astype(np.uint8); mask[0] = IGNORE_INDEX
    pal = rng.integers(0, 255, (5, 3))
    full = overlay(img, mask, pal, .6)
    for c in range(5):
        part = overlay(img, mask, pal, .6, visible_classes=[k for k in range(5) if k != c])
        np.testing.assert_array_equal(part[mask == c], img[mask == c])
        np.testing.assert_array_equal(part[mask != c], full[mask != c])
        assert not np.array_equal(full[mask == c], img[mask == c])  # the class was drawn before
    np.testing.assert_array_equal(full[0], img[0])  # ignore pixels are never drawn


def test_target_follows_the_losses():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 4, (16, 16)); conf = rng.random((16, 16)).astype(np.float32)
    guide = np.where(rng.random((16, 16)) < .5, rng.integers(0, 4, (16, 16)), IGNORE_INDEX)
    tgt, src = training_target(label, conf, guide, .7)
    keep = conf >= .7
    np.testing.assert_array_equal(tgt[keep], label[keep])                       # consistency loss wins where kept
    np.testing.assert_array_equal(tgt[~keep], guide[~keep])                         # else MaskCLIP (or nothing)
    assert ((src == 0) == (~keep & (guide == IGNORE_INDEX))).all()


def test_every_control_threshold_monotone(viewer):
    kept, labelled = [], []
    for t in np.linspace(0, 1, 11):
        viewer.thresh.value = float(t)
        kept.append(int(viewer.maps['kept'].sum()))
        k = viewer.maps['kept']
        np.testing.assert_array_equal(viewer.rgb['kept'][~k], viewer.rgb['image'][~k])  # dropped pixels undrawn
        np.testing.assert_array_equal(viewer.maps['target'][k], viewer.maps['student'][k])
    assert all(a >= b for a, b in zip(kept, kept[1:])), kept
    assert kept[0] == 64 * 64 and kept[-1] < kept[0]
    for t in np.linspace(0, 1, 11):
        viewer.guidance_thresh.value = float(t)
        labelled.append(int((viewer.maps['guidance'] != IGNORE_INDEX).sum()))
    assert all(a >= b for a, b in zip(labelled, labelled[1:])), labelled
    assert labelled[0] == 64 * 64


def test_class_toggle_hides_exactly_its_pixels(viewer):
    viewer.thresh.value = 0.5
    before = {k: viewer.rgb[k].copy() for k in OVERLAY_PANELS + ('ground truth',)}
    maps = dict(viewer.maps)
    names = dict(zip(OVERLAY_PANELS + ('ground truth',), ('guidance', 'student', 'kept_label', 'target', 'gt')))
    for c in range(4):
        viewer.class_toggles[c].value = False
        for panel, key in names.items():
            hit = maps[key] == c
            np.testing.assert_array_equal(viewer.rgb[panel][hit], viewer.rgb['image'][hit])
            np.testing.assert_array_equal(viewer.rgb[panel][~hit], before[panel][~hit])
        viewer.class_toggles[c].value = True
        for panel in before: np.testing.assert_array_equal(viewer.rgb[panel], before[panel])
    viewer.show_none.click()
    for panel in before: np.testing.assert_array_equal(viewer.rgb[panel], viewer.rgb['image'])
    viewer.show_all.click()
    for panel in before: np.testing.assert_array_equal(viewer.rgb[panel], before[panel])


def test_opacity_text_source_and_views(viewer):
    viewer.opacity.value = 0.0
    for p in OVERLAY_PANELS: np.testing.assert_array_equal(viewer.rgb[p], viewer.rgb['image'])
    viewer.opacity.value = 1.0
    s = viewer.maps['student']
    np.testing.assert_array_equal(viewer.rgb['student'], viewer.palette[s])
    calls = dict(viewer.state.model.calls)
    seen = {}
    for src in viewer.text_source.options:
        viewer.text_source.value = src
        seen[src] = viewer.maps['guidance'].copy()
    assert set(seen) == {'single', 'definitions', 'concepts'}
    assert not np.array_equal(seen['single'], seen['concepts'])
    weak = viewer.rgb['image'].copy(); student = viewer.maps['student'].copy()
    viewer.aug.value = 'strong'
    assert viewer.rgb['image'].shape == weak.shape and not np.array_equal(viewer.rgb['image'], weak)
    np.testing.assert_array_equal(viewer.maps['student'], student)  # targets come from the weak view
    viewer.aug.value = 'cutmix'
    out = viewer.current_outputs()
    j = viewer.state.partner(viewer.index.value, viewer.seed)
    partner = viewer.state.outputs(j)
    assert out.box.any()
    np.testing.assert_array_equal(viewer.maps['student'][out.box], partner.label[out.box])
    np.testing.assert_array_equal(viewer.maps['student'][~out.box], student[~out.box])
    np.testing.assert_array_equal(viewer.maps['gt'][out.box], partner.gt[out.box])
    first_box = out.box.copy()
    viewer.redraw_btn.click()
    assert not np.array_equal(viewer.current_outputs().box, first_box) or \
        viewer.state.partner(0, viewer.seed) != j
    assert viewer.state.model.calls['student'] <= calls['student'] + 2  # only new partners ran the student


def test_image_picker_and_cache(viewer):
    m = viewer.state.model
    viewer.index_box.value = 3
    assert viewer.index.value == 3 and viewer.index_box.value == 3
    viewer.index.value = 1
    assert viewer.index_box.value == 1
    np.testing.assert_array_equal(viewer.rgb['image'], fake_images()[1][0])
    calls = dict(m.calls)
    for t in (.3, .6, .9): viewer.thresh.value = t
    viewer.index.value = 3; viewer.index.value = 1
    assert m.calls == calls  # thresholds and revisits never rerun the backbone
    picked = set()
    for _ in range(10):
        viewer.random_btn.click(); picked.add(viewer.index.value)
    assert len(picked) > 1 and picked <= set(range(5))


def test_panels_show_the_arrays(viewer):
    for k in PANELS:
        png = Image.open(io.BytesIO(viewer.panels[k].value))
        a = np.asarray(png.convert('RGB'))
        f = a.shape[0] // viewer.rgb[k].shape[0]
        np.testing.assert_array_equal(a[::f, ::f], viewer.rgb[k])
    assert 'kept' in viewer.stats_html.value and '%' in viewer.stats_html.value
    assert viewer.stats['kept'] == pytest.approx(viewer.maps['kept'].mean())
    gt = viewer.maps['gt']; k = viewer.maps['kept'] & (gt != IGNORE_INDEX)
    assert viewer.stats['acc_kept'] == pytest.approx((viewer.maps['student'][k] == gt[k]).mean())


def test_no_gt_and_zero_shot_clip_only():
    v = PseudoLabelViewer(fake_images(3, with_gt=False), stub_model(student=False))
    assert v.rgb['ground truth'] is None and v._boxes['ground truth'].layout.display == 'none'
    assert np.isnan(v.stats['acc_kept'])
    guidance_conf, guidance_label = v.state.maskclip(0, 'single')
    np.testing.assert_array_equal(v.maps['student'], guidance_label)  # zero-shot: the raw MaskCLIP prediction
    assert 'zero-shot' in v.status.value
    v.thresh.value = .1; v.aug.value = 'cutmix'; v.text_source.value = 'concepts'
    assert v.state.model.calls['student'] == 0


def test_precompute_batches_and_static_figure():
    v = PseudoLabelViewer(ViewerState(fake_images(6), stub_model(), batch_size=4))
    v.precompute(progress=False)
    assert v.state.model.calls['clip'] == 3  # image 0 at start, then the 5 others as batches of 4 + 1
    n = dict(v.state.model.calls)
    for i in range(6): v.index.value = i
    assert v.state.model.calls == n
    fig = v.figure()
    assert len([a for a in fig.axes if a.images]) == len(PANELS)


def test_update_latency_toy_size(viewer):
    viewer.thresh.value = .5  # warm
    ts = []
    for t in np.linspace(.5, .99, 10):
        t0 = time.perf_counter(); viewer.thresh.value = float(t); ts.append(time.perf_counter() - t0)
    assert np.median(ts) < .5, ts


def test_big_images_draw_at_display_resolution():
    imgs = fake_images(2, h=400, w=400)
    v = PseudoLabelViewer(imgs, stub_model(), panel_px=100)
    assert v.rgb['image'].shape == (100, 100, 3)
    np.testing.assert_array_equal(v.rgb['image'], imgs[0][0][::4, ::4])
    out = v.current_outputs()
    full = image_stats(out.label, out.conf, np.where(out.guidance_conf >= .9, out.guidance_label, IGNORE_INDEX), .95, 4, out.gt)
    assert v.stats['kept'] == full['kept'] and np.array_equal(v.stats['counts'], full['counts'])


@pytest.mark.slow
def test_viewer_notebook_runs_under_papermill_with_widget_state(tmp_path, monkeypatch):
    import json, os, papermill
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path/'viewer.ipynb'
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(repo), os.environ.get('PYTHONPATH', '')]))
    papermill.execute_notebook(str(repo/'nbs'/'viewer.ipynb'), str(out), kernel_name='python3', cwd=str(tmp_path),
                               parameters=dict(split='20/unlabeled'), progress_bar=False)
    nb = json.loads(out.read_text())
    state = nb['metadata']['widgets']['application/vnd.jupyter.widget-state+json']['state']
    views = [o['data']['application/vnd.jupyter.widget-view+json']['model_id'] for c in nb['cells']
             for o in c.get('outputs', []) if 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    assert len(views) == 1 and views[0] in state              # the app's root VBox is saved with its state
    images = [m for m in state.values() if m['model_name'] == 'ImageModel']
    assert len(images) >= 7                                    # the panels, with their PNG bytes, for static HTML
    assert any('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))  # mpl fallback


@pytest.mark.slow
def test_toy_world_fresh_student_zero_shot_and_checkpoint(tmp_path):
    from semivl.viewer import _to_input, toy_viewer
    from semivl.viewer_model import toy_segmentor
    v = toy_viewer('val')                                     # freshly initialised student
    assert v.state.model.student is not None and v.n_classes == 11
    kept = []
    for t in (0., .2, .4, .6, .8, 1.):
        v.thresh.value = t; kept.append(int(v.maps['kept'].sum()))
    from semivl.toyworld import SIZE
    assert kept == sorted(kept, reverse=True) and kept[0] == SIZE * SIZE
    ts = []
    for t in (.5, .7, .9):
        t0 = time.perf_counter(); v.guidance_thresh.value = t; ts.append(time.perf_counter() - t0)
    assert max(ts) < .5, ts
    zs = toy_viewer('val', student=False)                     # the zero-shot CLIP alone
    np.testing.assert_array_equal(zs.maps['student'], zs.state.maskclip(0, 'guidance')[1])
    seg, _, _ = toy_segmentor()                               # a 'trained' model: perturbed decoder weights
    with torch.no_grad():
        for p in seg.decode_head.parameters(): p.add_(torch.randn_like(p) * .2)
    seg.guidance_bias[0] = .2                                 # and a calibrated MaskCLIP background bias
    torch.save({'model': seg.state_dict()}, tmp_path/'best.pth')
    vc = toy_viewer('val', checkpoint=tmp_path/'best.pth')
    img = vc.state.sample(0)[0]
    with torch.no_grad(): conf, label = seg(_to_input(img)[None]).softmax(1)[0].max(0)
    np.testing.assert_allclose(vc.state.student(0, 'single')[0], conf.numpy(), atol=1e-5)
    assert not np.allclose(vc.state.student(0, 'single')[0], v.state.student(0, 'single')[0])
    # the 'guidance' source is the model's MaskCLIP with its bias: the training's labels at the 0.9 threshold
    guidance_conf, guidance_label = vc.state.maskclip(0, 'guidance')
    want = seg.maskclip_pseudo_label(_to_input(img)[None], 0.9)[0].numpy()
    assert (np.where(guidance_conf >= .9, guidance_label, IGNORE_INDEX) != want).mean() < 1e-3
    assert not np.array_equal(guidance_label, vc.state.maskclip(0, 'prompts')[1])    # same text without the bias
    old = {k: v for k, v in seg.state_dict().items() if k != 'guidance_bias'}   # a checkpoint from before the bias
    torch.save({'model': old}, tmp_path/'old.pth')
    assert toy_viewer('val', checkpoint=tmp_path/'old.pth').state.model.biases['guidance'].abs().sum() == 0
    torch.save({'model': {**old, 'stray': torch.zeros(1)}}, tmp_path/'bad.pth')
    with pytest.raises(KeyError, match='stray'): toy_segmentor(tmp_path/'bad.pth')


def test_live_ranking_orders_by_the_statistic_and_reuses_its_pass(viewer):
    "Sorting by a live statistic walks the images in its order; moving the keep range does not recompute it"
    viewer.sort_by.value = 'live: student = guidance'; viewer.high_first.value = True
    vals = viewer.sort_values('live: student = guidance')
    assert len(vals) == len(viewer.state) and list(vals[viewer.order]) == sorted(vals[~np.isnan(vals)], reverse=True)
    first = viewer._live
    viewer.keep.value = (float(np.nanmedian(vals)), viewer.keep.max)
    assert viewer._live is first and all(vals[i] >= np.nanmedian(vals) for i in viewer.order)
    viewer.thresh.value = 0.5                                  # another threshold: a new pass
    viewer.sort_values('live: student = guidance'); assert viewer._live is not first


def test_toy_segmentor_builds_the_model_a_checkpoint_describes(tmp_path):
    "A checkpoint's own model settings (zoomed guidance, a narrower head) are rebuilt, as evaluation reads them"
    from semivl.segmentor import ModelCfg, SemiVLSegmentor
    from semivl.viewer_model import _toy_clip, toy_segmentor
    _, texts, _ = toy_segmentor()
    cfg = ModelCfg.preset('toy').update(guidance_zoom=2, guidance_stride=16, channels=32, text_channels=32)
    seg = SemiVLSegmentor(cfg, _toy_clip()[0], texts['single'], texts['prompts']).eval()
    torch.save({'model': seg.state_dict(), 'model_cfg': cfg.to_dict()}, tmp_path/'run.pth')
    got, _, _ = toy_segmentor(tmp_path/'run.pth')
    assert (got.cfg.guidance_zoom, got.cfg.channels) == (2, 32)
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(got(img), seg(img))
    torch.testing.assert_close(got.maskclip_logits(img), seg.maskclip_logits(img))
    torch.testing.assert_close(got.guidance_text, texts['prompts'])          # the toy world's prompts guide by default
    bare = cfg.update(guidance_text='single')                              # the ladder's bare-names rung
    seg = SemiVLSegmentor(bare, _toy_clip()[0], texts['single'], texts['single']).eval()
    torch.save({'model': seg.state_dict(), 'model_cfg': bare.to_dict()}, tmp_path/'bare.pth')
    got, _, _ = toy_segmentor(tmp_path/'bare.pth')
    torch.testing.assert_close(got.guidance_text, texts['single'])
    torch.testing.assert_close(got.maskclip_logits(img), seg.maskclip_logits(img))
