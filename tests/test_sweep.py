"""`python -m semivl.sweep` on a 2-run grid: both runs execute train.ipynb, the CSV and markdown tables appear."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sweep_two_runs_write_tables(tmp_path):
    cmd = [sys.executable, '-m', 'semivl.sweep', '--methods', 'supervised', 'semivl', '--splits', '20', '--seeds', '0',
           '--out', str(tmp_path/'sweep'), '--md', str(tmp_path/'toy.md'),
           '-p', 'iters', '2', '-p', 'batch_size', '2', '-p', 'val_limit', '4', '-p', 'snapshots', '1']
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path/'sweep'/'results.csv')))
    assert [(x['method'], x['split'], x['seed'], x['status']) for x in rows] == \
        [('supervised', '20', '0', 'ok'), ('semivl', '20', '0', 'ok')]
    assert all(0 <= float(x['miou']) <= 100 and x['iterations'] == '2' for x in rows)
    md = (tmp_path/'toy.md').read_text()
    for x in rows: assert f"| toyworld | 20 | {x['method']} | 1 | {float(x['miou']):.1f} ± 0.0 |" in md
    # a second call finds both runs done and re-runs nothing
    r2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0 and r2.stdout.count(': cached mIoU') == 2, r2.stdout[-2000:]
    # --force re-runs them and keeps the earlier runs, moved aside
    r3 = subprocess.run(cmd[:4] + ['semivl'] + cmd[6:] + ['--force'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r3.returncode == 0 and r3.stdout.count(': ok mIoU') == 1, r3.stdout[-2000:]
    moved = list((tmp_path/'sweep').glob('toy-20-semivl-s0.old-*'))
    assert len(moved) == 1 and (moved[0]/'model.pt').is_file()


@pytest.mark.slow
def test_parallel_and_submitit_sweeps_give_the_sequential_rows(tmp_path):
    "The same 2-run grid one after another, with --jobs 2, and through submitit's local executor: the same table"
    base = ['--methods', 'supervised', 'semivl', '--splits', '20', '--seeds', '0', '-p', 'iters', '2', '-p', 'batch_size',
            '2', '-p', 'val_limit', '4', '-p', 'snapshots', '1', '-p', 'threads', '1']
    rows = {}
    for name, extra in [('sequential', []), ('jobs', ['--jobs', '2']), ('submitit', ['--submitit', 'local'])]:
        r = subprocess.run([sys.executable, '-m', 'semivl.sweep', *base, '--out', str(tmp_path/name), *extra], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        rows[name] = [(x['method'], x['split'], x['seed'], x['status'], x['miou'])
                      for x in csv.DictReader(open(tmp_path/name/'results.csv'))]
    assert [x[:4] for x in rows['sequential']] == [('supervised', '20', '0', 'ok'), ('semivl', '20', '0', 'ok')]
    assert rows['jobs'] == rows['sequential'] and rows['submitit'] == rows['sequential'], rows
