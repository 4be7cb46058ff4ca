"""The shipped tiny CLIP: loads through the standard loaders, reproduces its recorded metrics; the
pretraining script works (a short fresh run lowers its loss, and resumes)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from semivl.toyclip import WordTokenizer, load_toy_clip, toy_clip_dir
from semivl.toyclip_pretrain import dense_zero_shot_eval, heldout_crops, zero_shot_eval
from semivl.toyworld import write_toyworld

REPO = Path(__file__).parents[1]


@pytest.fixture(scope='module')
def shipped():
    return load_toy_clip()


@pytest.fixture(scope='module')
def metrics():
    return json.loads((toy_clip_dir()/'metrics.json').read_text())


def test_shipped_files():
    d = toy_clip_dir()
    for f in ('open_clip_config.json', 'open_clip_model.safetensors', 'vocab.json', 'train_log.csv', 'metrics.json'):
        assert (d/f).is_file(), f
    assert (d/'open_clip_model.safetensors').stat().st_size <= 25 * 2**20


def test_loads_like_an_open_clip_checkpoint(shipped):
    "open_clip's own `local-dir:` path and the kit's `load_clip` build the same model"
    model, tok = shipped
    ref = open_clip.create_model('local-dir:' + str(toy_clip_dir()))
    sd, sd_ref = model.state_dict(), ref.state_dict()
    assert sd.keys() == sd_ref.keys() and all(torch.equal(sd[k], sd_ref[k].float()) for k in sd)
    ids = tok(['a photo of a dotted red.'])
    assert isinstance(tok, WordTokenizer) and ids.shape == (1, 32) and ids.dtype == torch.long
    assert ids[0].argmax() == 8  # EOT is the highest id: open_clip pools there


def test_reproduces_recorded_zero_shot(shipped, metrics):
    model, tok = shipped
    rec = metrics['zero_shot']
    x, y = heldout_crops(metrics['heldout']['n_scenes'], metrics['heldout']['seed'])
    assert len(y) == rec['n']
    m = zero_shot_eval(model, tok, x, y)
    for k in ('acc', 'colour_acc', 'texture_acc'):
        assert abs(m[k] - rec[k]) <= .005, (k, m[k], rec[k])
    assert m['acc'] >= .9 and m['texture_acc'] >= .9  # the look-alike pairs are told apart zero-shot


@pytest.mark.slow
def test_reproduces_recorded_dense_miou(shipped, metrics, tmp_path):
    "The dense read-out recorded at pretraining time, on the world it was recorded on: version 2 = the scenes at 64 px"
    model, tok = shipped
    rec = metrics['dense_zero_shot']
    v2 = write_toyworld(tmp_path/'v2', split_sizes=(20,), progress=False, size=64)
    m = dense_zero_shot_eval(model, tok, v2, zoom=rec['zoom'],
                             stride=rec['stride'], background=rec['background'])
    assert abs(m['miou'] - rec['miou']) <= .005, (m['miou'], rec['miou'])
    assert m['bg_bias'] == pytest.approx(rec['bg_bias'], abs=1e-6)


def _script(*args, check=True):
    "Run data_scripts/pretrain_toyclip.py with `args` (the kit importable from the repo)"
    env = {**os.environ, 'PYTHONPATH': str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    return subprocess.run([sys.executable, str(REPO/'data_scripts/pretrain_toyclip.py'), *map(str, args)],
                          check=check, env=env, cwd=REPO, capture_output=True, text=True)


def _run(out, steps, *extra):
    _script('--out', out, '--steps', steps, '--batch-size', 48, '--n-scenes', 200, '--warmup', 5, '--eval-every', 10,
            '--ckpt-every', 10, '--n-eval-scenes', 20, '--threads', 1, '--no-progress', '--skip-eval', *extra)
    with open(out/'train_log.csv') as fh: return list(csv.DictReader(fh))


@pytest.mark.slow
def test_short_pretraining_lowers_loss_and_resumes(tmp_path):
    log = _run(tmp_path, 30)
    assert [int(r['step']) for r in log] == [10, 20, 30]
    assert float(log[-1]['loss']) < float(log[0]['loss']) - .1, [r['loss'] for r in log]
    log = _run(tmp_path, 40)  # same folder: resumes at step 30 instead of starting over
    assert [int(r['step']) for r in log] == [10, 20, 30, 40]
    assert (tmp_path/'open_clip_model.safetensors').is_file() and (tmp_path/'metrics.json').is_file()
    model, tok = load_toy_clip(tmp_path)
    assert model.encode_text(tok(['a photo of a striped red.'])).shape == (1, 128)


@pytest.fixture(scope='module')
def default_run(tmp_path_factory):
    "A 10-step pretraining run with the default settings: the baseline the options below must change"
    out = tmp_path_factory.mktemp('default')
    return out, _run(out, 10)


@pytest.mark.slow
def test_scene_zoom_reaches_the_pretraining_run(tmp_path, default_run):
    "`--scene-zoom LO HI` is a setting of the run: recorded in metrics.json, and its batches (so its loss) differ"
    log = _run(tmp_path/'zoom', 10, '--scene-zoom', '2', '2')
    assert [int(r['step']) for r in log] == [10]
    assert json.loads((tmp_path/'zoom'/'metrics.json').read_text())['cfg']['scene_zoom'] == [2., 2.]
    assert log[0]['loss'] != default_run[1][0]['loss']   # seeded runs: only the windows can change it


@pytest.mark.slow
def test_world_knobs_reach_the_pretraining_run(tmp_path, default_run):
    "`--illumination` etc. pretrain on that variant's corpus (recorded), and its evaluation needs that world's folder"
    out = tmp_path/'light'
    log = _run(out, 10, '--illumination', '.25')
    m = json.loads((out/'metrics.json').read_text())
    assert m['cfg']['world'] == {'illumination': .25} and m['heldout']['world'] == {'illumination': .25}
    assert log[0]['loss'] != default_run[1][0]['loss']   # seeded runs: only the scenes can change it
    assert json.loads((default_run[0]/'metrics.json').read_text())['cfg']['world'] is None
    r = _script('--out', out, '--eval-only', check=False)
    assert r.returncode != 0 and '--data-root' in r.stderr, r.stderr[-500:]
