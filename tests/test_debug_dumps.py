"""Training debug dumps with the real toy model (tiny CLIP, 'toy' preset, batch 2): written on the right iterations
with the step's own tensors, read back and drawn by the viewer, and free: dumps on or off, training is bit-identical."""
import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from semivl.core import IGNORE_INDEX, seed_everything
from semivl.train import train
from semivl.checkpoint import load_checkpoint
from semivl.train_config import TrainCfg
from semivl.debug import DUMP_VIEWS, DebugDumps, DebugDumpViewer, plot_debug_dump

ITERS = 4
pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


def toy_run(out_dir, iters=ITERS, resume='auto', **kw):
    from semivl.data import build_loader, semi_datasets
    from semivl.toyworld import ensure_toyworld
    from semivl.viewer_model import toy_segmentor
    world = ensure_toyworld()
    seg, _, _ = toy_segmentor()
    seed_everything(0)
    ds = semi_datasets(world, '20', uint8=True)
    lx, lu = (build_loader(ds[k], batch_size=2, num_workers=0) for k in ('train_l', 'train_u'))
    info = json.loads((world / 'classes.json').read_text())
    cfg = TrainCfg(epochs=None, iters=iters, log_every=1, lr=3e-4, backbone_lr_mult=.1, **kw)
    train(cfg, seg, lx, lu, out_dir=out_dir, stop_after=iters, progress=False, class_names=info['classes'], resume=resume)
    return info


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp('debug_dumps')
    info = toy_run(d / 'on', debug_every=2)
    toy_run(d / 'off')
    return d, info


def test_dumps_do_not_change_training(runs):
    d, _ = runs
    assert not (d / 'off' / 'debug').exists()
    a, b = load_checkpoint(d / 'on' / 'last.pt'), load_checkpoint(d / 'off' / 'last.pt')
    assert a['iteration'] == b['iteration'] == ITERS
    for k, v in a['model'].items(): assert torch.equal(v, b['model'][k]), k
    for s_a, s_b in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(s_a['exp_avg'], s_b['exp_avg']) and torch.equal(s_a['exp_avg_sq'], s_b['exp_avg_sq'])
    assert torch.equal(a['rng'][0]['torch'], b['rng'][0]['torch'])         # the dump drew no random numbers
    assert a['rng'][0]['python'] == b['rng'][0]['python']


def test_dumps_hold_the_steps_tensors_on_the_right_iterations(runs):
    d, info = runs
    dumps = DebugDumps(d / 'on')
    assert dumps.iterations == [2, 4] and [p.name for p in dumps.paths] == ['it000002.npz', 'it000004.npz']
    log = {int(r['it']): r for r in csv.DictReader(open(d / 'on' / 'metrics.csv')) if r.get('train/loss')}
    boxed = 0
    for it in dumps.iterations:
        z = dumps.load(it)
        assert (z['iteration'], z['method'], z['class_names'], z['num_classes']) == (it, 'semivl', info['classes'], 11)
        np.testing.assert_allclose(z['loss'], float(log[it]['train/loss']), rtol=1e-5)  # the step logged as `it`
        for k in ('img_x', 'img_w', 'img_s1', 'img_s2'): assert z[k].shape == (2, 64, 64, 3) and z[k].dtype == np.uint8, k
        for k in ('mask_x', 'pred_x', 'label_w', 'label_s1', 'guidance_w', 'guidance_s2', 'ignore_w', 'box1'):
            assert z[k].shape == (2, 64, 64) and z[k].dtype == np.uint8, k
        for k in ('conf_x', 'conf_w', 'conf_s1', 'conf_s2'):
            assert z[k].dtype == np.float16 and 1 / 11 - 1e-3 <= z[k].min() and z[k].max() <= 1, k
        assert set(np.unique(z['ignore_w'])) <= {0, IGNORE_INDEX}
        assert (z['guidance_w'][z['ignore_w'] == IGNORE_INDEX] == IGNORE_INDEX).all()   # padding: no MaskCLIP label
        for k, i in (('s1', '1'), ('s2', '2')):        # outside its CutMix box a strong view's maps are the weak view's
            out = z[f'box{i}'] == 0
            boxed += (~out).sum()
            for m in ('label', 'conf', 'ignore', 'guidance'):
                np.testing.assert_array_equal(z[f'{m}_{k}'][out], z[f'{m}_w'][out], err_msg=f'{m}_{k}')
    assert boxed > 0                                   # (CutMix boxes are drawn with p=0.5: some images have none)
    with np.load(dumps.paths[0]) as raw:                                    # the reader returns the file's arrays
        z = dumps[0]
        for k in raw.files:
            if raw[k].ndim: np.testing.assert_array_equal(z[k], raw[k], err_msg=k)


def test_viewer_shows_exactly_the_dump(runs):
    d, info = runs
    v = DebugDumpViewer(d / 'on', palette=info['palette'])
    assert v.iteration.value == 4 and v.view.options == DUMP_VIEWS and v.classes == info['classes']
    for it in (4, 2):
        v.iteration.value = it
        z = DebugDumps(d / 'on').load(it)
        for j in (0, 1):
            v.image.value = j
            for view, k in (('weak', 'w'), ('strong 1', 's1'), ('strong 2', 's2')):
                v.view.value = view
                np.testing.assert_array_equal(v.rgb['image'], z[f'img_{k}'][j])
                np.testing.assert_array_equal(v.maps['student'], z[f'label_{k}'][j])
                np.testing.assert_array_equal(v.maps['guidance'], z[f'guidance_{k}'][j])
                np.testing.assert_array_equal(v.maps['conf'], z[f'conf_{k}'][j].astype(np.float32))
                keep = (z[f'conf_{k}'][j] >= z['conf_thresh']) & (z[f'ignore_{k}'][j] != IGNORE_INDEX)
                np.testing.assert_array_equal(v.maps['kept'], keep)
                if k != 'w': np.testing.assert_array_equal(v.maps['prediction'], z[f'pred_{k}'][j])
            v.view.value = 'labeled'
            np.testing.assert_array_equal(v.maps['gt'], z['mask_x'][j])
            np.testing.assert_array_equal(v.maps['student'], z['pred_x'][j])
    png = np.asarray(Image.open(io.BytesIO(v.panels['image'].value)))      # what the widget displays
    np.testing.assert_array_equal(png[::png.shape[0] // 64, ::png.shape[1] // 64, :3], v.rgb['image'])
    v.thresh.value = 0.0                                                    # every valid pixel kept at threshold 0
    v.view.value = 'weak'
    assert v.maps['kept'].sum() == (z['ignore_w'][1] != IGNORE_INDEX).sum()
    fig = plot_debug_dump(z, 1, palette=info['palette'])
    assert len([a for a in fig.axes if a.images]) == 3 * 8 + 4


def test_a_fresh_run_removes_an_older_runs_dumps(runs, tmp_path):
    d, _ = runs
    shutil.copytree(d / 'on' / 'debug', tmp_path / 'debug')
    toy_run(tmp_path, iters=1, resume=False)
    assert list((tmp_path / 'debug').iterdir()) == []


def test_an_old_dump_reads_under_todays_names(runs, tmp_path):
    "A dump of an earlier version (mclip_w, mcc_lambda, loss_mc_s1...) opens in the viewer under today's names"
    from semivl.losses import OLD_GUIDANCE_NAMES
    d, info = runs
    new = DebugDumps(d / 'on').load(4)
    old_name = {n: o for o, n in OLD_GUIDANCE_NAMES.items()}
    with np.load(d / 'on' / 'debug' / 'it000004.npz') as z: arrays = {old_name.get(k, k): z[k] for k in z.files}
    assert {'mclip_w', 'mclip_s1', 'mcc_lambda', 'mcc_conf_thresh', 'loss_mc_s1'} <= set(arrays)
    (tmp_path / 'debug').mkdir(); np.savez_compressed(tmp_path / 'debug' / 'it000004.npz', **arrays)
    old = DebugDumps(tmp_path).load(4)
    assert set(old) == set(new) and not any(k.startswith(('mclip', 'mcc', 'loss_mc')) for k in old)
    np.testing.assert_array_equal(old['guidance_s1'], new['guidance_s1']); assert old['guidance_lambda'] == new['guidance_lambda']
    v = DebugDumpViewer(tmp_path, palette=info['palette'])
    v.view.value = 'strong 1'
    np.testing.assert_array_equal(v.maps['guidance'], new['guidance_s1'][v.image.value])
    assert v.rgb['guidance'] is not None
