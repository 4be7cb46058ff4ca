"""`python -m semivl.sweep --ladder --jobs 2` on one seed, 3 iterations per rung, with one extra setting on every rung: every
rung's config builds, trains and is evaluated through nbs/train.ipynb, the run records the rung's settings and the
extra one, and the ladder's CSV, markdown and chart appear."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semivl.ladder import LADDER, ladder_summary, rung_options

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def ladder(tmp_path_factory):
    out = tmp_path_factory.mktemp('ladder')
    cmd = [sys.executable, '-m', 'semivl.sweep', '--ladder', '--splits', '20', '--seeds', '0', '--out', str(out),
           '-p', 'iters', '3', '-p', 'batch_size', '2', '-p', 'val_limit', '4', '-p', 'snapshots', '1', '-p', 'threads', '1',
           '--jobs', '2', '--options', '{"fp_rate": 0.4}']   # an idea tried on every rung
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_every_rung_trains_three_iterations_with_its_settings(ladder):
    rows = list(csv.DictReader(open(ladder/'ladder.csv')))
    assert [(x['rung'], x['status'], x['iterations']) for x in rows] == [(r.key, 'ok', '3') for r in LADDER]
    for r in LADDER:
        m = json.loads((ladder/f'toy-20-{r.key}-s0'/'metrics.json').read_text())
        assert m['method'] == r.method and 0 <= m['miou'] <= 100
        settings = {**m['model_cfg'], **m['train_cfg']}
        for k, v in rung_options(r).items(): assert settings[k] == v, (r.key, k)
        assert settings['fp_rate'] == 0.4, r.key
    cfg = lambda key: json.loads((ladder/f'toy-20-{key}-s0'/'metrics.json').read_text())['model_cfg']
    assert (cfg('vit')['init'], cfg('clip')['init'], cfg('ftap')['head'], cfg('vlg')['head']) == ('random', 'clip', 'dlv3p', 'vlg')
    assert cfg('guidance')['guidance_text'] == 'single' and cfg('semivl')['guidance_text'] is None


@pytest.mark.slow
def test_ladder_tables_and_chart(ladder):
    md = (ladder/'ladder.md').read_text()
    rows = list(csv.DictReader(open(ladder/'ladder.csv')))
    for s in ladder_summary(rows): assert f"| {s['label']} (`{s['rung']}`) |" in md and f"{s['mean']:.1f} ± 0.0" in md
    assert '### Per-class IoU per rung' in md and '| 20 | vit | 1 |' in md
    assert (ladder/'ladder.png').stat().st_size > 5000


@pytest.mark.slow
def test_ladder_checkpoints_evaluate_with_their_head(ladder):
    "A rung's weights load back with the head and initialisation they were trained with (evaluate.ipynb's path)"
    from semivl.run_eval import evaluate_checkpoint, prepare_evaluation
    for key, head in [('clip', 'DLV3PHead'), ('vlg', 'VLGHead')]:
        er = prepare_evaluation(ladder/f'toy-20-{key}-s0'/'model.pt', val_limit=4)   # the images train.ipynb scored
        assert type(er.model.decode_head).__name__ == head
        metrics, _ = evaluate_checkpoint(er, progress=False)
        trained = json.loads((ladder/f'toy-20-{key}-s0'/'metrics.json').read_text())
        for k in ('miou', 'acc'): assert metrics[k] == pytest.approx(trained[k], abs=1e-6), (key, k)
    sd = torch.load(ladder/'toy-20-vit-s0'/'model.pt', weights_only=False)
    sd = sd.get('model', sd)
    from semivl.clip import run_clip
    clip, _ = run_clip()
    w = sd['backbone.visual.conv1.weight']
    assert not torch.allclose(w, clip.visual.conv1.weight)   # the non-language rung never saw CLIP's weights
