"""`python -m semivl.site`: every notebook in nbs/ executes in a fresh kernel and renders to an HTML page with its
figures; a cell error anywhere fails this test (so CI fails on it)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_site_builds_every_notebook_with_its_figures(tmp_path):
    out = tmp_path/'site'
    r = subprocess.run([sys.executable, '-m', 'semivl.site', '--out', str(out)], cwd=REPO, capture_output=True,
                       text=True, env={**__import__('os').environ, 'SEMIVL_PROGRESS': 'lines'})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    nbs = sorted(p.stem for p in (REPO/'nbs').glob('*.ipynb'))
    pages = {p.stem for p in out.glob('*.html')}
    assert {('index' if n == 'index' else n) for n in nbs} <= pages, set(nbs) - pages
    png = lambda name: len(re.findall(r'data:image/png;base64', (out/f'{name}.html').read_text()))
    assert png('00_overview') >= 1 and png('10_train') >= 1 and png('04_clip') >= 1
    assert png('train') >= 5            # batch grid, two snapshots (curves + panels), the dump, the IoU bars
    assert png('evaluate') >= 2 and png('viewer') >= 1
    assert png('ablations') >= 2 and png('12_ladder') >= 2   # the ladder chart and the per-class heatmap
    assert 'src="results/toy_ladder.png"' in (out/'index.html').read_text() and (out/'results'/'toy_ladder.png').is_file()
    assert 'href="10_train.html' in (out/'index.html').read_text() or 'href="13_run.html' in (out/'train.html').read_text()
