"""`python -m semivl.site`: the notebooks render to HTML pages with their figures, the user notebooks (train, evaluate,
viewer) run as one chain with their site parameters, and a cell error fails the build (14_site checks that).
`nbdev_test` already executes every notebook, so here the pages whose figures are checked execute and the rest render
as committed: that keeps this test from paying a second kernel start per notebook."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXECUTED = ['index', '00_overview', '04_clip', '10_train', '12_ladder', 'ablations', 'train', 'evaluate', 'viewer']


def _site(*args):
    r = subprocess.run([sys.executable, '-m', 'semivl.site', *args], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, 'SEMIVL_PROGRESS': 'lines'})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.slow
def test_site_builds_every_notebook_with_its_figures(tmp_path):
    out = tmp_path/'site'
    nbs = sorted(p.stem for p in (REPO/'nbs').glob('*.ipynb'))
    assert set(EXECUTED) <= set(nbs)
    _site('--out', str(out), '--only', *EXECUTED)
    _site('--out', str(out), '--no-execute', '--only', *sorted(set(nbs) - set(EXECUTED)))
    assert set(nbs) <= {p.stem for p in out.glob('*.html')}, set(nbs) - {p.stem for p in out.glob('*.html')}
    png = lambda name: len(re.findall(r'data:image/png;base64', (out/f'{name}.html').read_text()))
    assert png('00_overview') >= 1 and png('10_train') >= 1 and png('04_clip') >= 1
    assert png('train') >= 5            # batch grid, two snapshots (curves + panels), the dump, the IoU bars
    assert png('evaluate') >= 2 and png('viewer') >= 1
    assert png('ablations') >= 2 and png('12_ladder') >= 2   # the ladder chart and the per-class heatmap
    assert 'src="results/toy_ladder.png"' in (out/'index.html').read_text() and (out/'results'/'toy_ladder.png').is_file()
    assert 'href="10_train.html' in (out/'index.html').read_text() or 'href="13_run.html' in (out/'train.html').read_text()
