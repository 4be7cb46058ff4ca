"""`python -m semivl.sweep` on a 2-run grid: both runs execute train.ipynb, the CSV and markdown tables appear, a second
call re-runs nothing, and --jobs 2 and submitit's local executor give the same rows as one run after another."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRID = ['--methods', 'supervised', 'semivl', '--splits', '20', '--seeds', '0', '-p', 'iters', '2', '-p', 'batch_size',
        '2', '-p', 'val_limit', '4', '-p', 'snapshots', '1', '-p', 'threads', '1']


def _sweep(*args, timeout=900):
    return subprocess.run([sys.executable, '-m', 'semivl.sweep', *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _rows(out: Path) -> list[tuple]:
    return [(x['method'], x['split'], x['seed'], x['status'], x['miou']) for x in csv.DictReader(open(out/'results.csv'))]


@pytest.fixture(scope='module')
def sequential(tmp_path_factory):
    "The grid run one after another (the default): (out folder, markdown path, the command, its rows as first written)"
    tmp = tmp_path_factory.mktemp('sweep')
    cmd = [*GRID, '--out', str(tmp/'sweep'), '--md', str(tmp/'toy.md')]
    r = _sweep(*cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp/'sweep', tmp/'toy.md', cmd, _rows(tmp/'sweep')   # (a later call rewrites the CSV: status 'cached')


@pytest.mark.slow
def test_sweep_two_runs_write_tables(sequential):
    out, md_path, cmd, _ = sequential
    rows = list(csv.DictReader(open(out/'results.csv')))
    assert [(x['method'], x['split'], x['seed'], x['status']) for x in rows] == \
        [('supervised', '20', '0', 'ok'), ('semivl', '20', '0', 'ok')]
    assert all(0 <= float(x['miou']) <= 100 and x['iterations'] == '2' for x in rows)
    md = md_path.read_text()
    for x in rows: assert f"| toyworld | 20 | {x['method']} | 1 | {float(x['miou']):.1f} ± 0.0 |" in md
    # a second call finds both runs done and re-runs nothing
    r2 = _sweep(*cmd, timeout=120)
    assert r2.returncode == 0 and r2.stdout.count(': cached mIoU') == 2, r2.stdout[-2000:]


@pytest.mark.slow
def test_force_reruns_and_keeps_the_earlier_run(sequential, tmp_path):
    "--force re-runs the chosen run and moves the earlier one aside (on a copy: the other tests read the original)"
    import shutil
    out = sequential[0]
    copy = tmp_path/'sweep'; shutil.copytree(out, copy)
    r = _sweep('--methods', 'semivl', *GRID[3:], '--out', str(copy), '--force', timeout=300)
    assert r.returncode == 0 and r.stdout.count(': ok mIoU') == 1, r.stdout[-2000:]
    moved = list(tmp_path.glob('sweep/toy-20-semivl-s0.old-*'))
    assert len(moved) == 1 and (moved[0]/'model.pt').is_file()


@pytest.mark.slow
@pytest.mark.parametrize('how', [['--jobs', '2'], ['--submitit', 'local']])
def test_parallel_and_submitit_sweeps_give_the_sequential_rows(sequential, tmp_path, how):
    "The same 2-run grid with --jobs 2, and through submitit's local executor: the rows of the sequential run"
    want = sequential[3]
    assert [x[:4] for x in want] == [('supervised', '20', '0', 'ok'), ('semivl', '20', '0', 'ok')]
    r = _sweep(*GRID, '--out', str(tmp_path/'sweep'), *how)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows(tmp_path/'sweep') == want
