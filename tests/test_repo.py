"""The repository keeps its promises: README in sync with index.ipynb, CI runs the README's test command,
and the package is exactly what the notebooks export."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_rendered_from_index():
    r = subprocess.run([sys.executable, '.ci/render_readme.py', '--check'], cwd=ROOT)
    assert r.returncode == 0, "README.md is stale: run `python .ci/render_readme.py`"


def test_readme_has_two_commands_and_ci_uses_the_test_one():
    readme = (ROOT/'README.md').read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert len(blocks) >= 2
    setup_main, setup_test = blocks[0], blocks[1]
    assert 'pip install -e .' in setup_main and 'pip install -e' in setup_test
    assert setup_test.rstrip().endswith('nbdev_test && pytest')
    ci = (ROOT/'.ci'/'run').read_text()
    assert 'grep -m1 -E "nbdev_test && pytest" README.md' in ci


def test_notebooks_are_clean_and_numbered():
    import json
    for nb in (ROOT/'nbs').glob('*.ipynb'):
        cells = json.loads(nb.read_text())['cells']
        for c in cells:
            if c['cell_type'] == 'code':
                assert not c['outputs'] and c['execution_count'] is None, f"{nb.name} has outputs: run nbdev_clean"
        assert re.match(r'(\d\d_\w+|index|train|evaluate|viewer|ablations)\.ipynb$', nb.name), f"{nb.name}: number library notebooks NN_topic"


def test_export_matches_notebooks(tmp_path):
    "nbdev_export into a scratch copy gives the committed package byte for byte"
    import shutil
    for name in ('nbs', 'semivl'):
        shutil.copytree(ROOT/name, tmp_path/name, ignore=shutil.ignore_patterns('__pycache__', 'assets'))
    shutil.copy(ROOT/'settings.ini', tmp_path/'settings.ini')
    exe = Path(sys.executable).with_name('nbdev_export')
    subprocess.run([str(exe)], cwd=tmp_path, check=True)
    for py in (ROOT/'semivl').glob('*.py'):
        assert (tmp_path/'semivl'/py.name).read_text() == py.read_text(), f"{py.name} differs from its notebook"
    assert sorted(p.name for p in (tmp_path/'semivl').glob('*.py')) == sorted(p.name for p in (ROOT/'semivl').glob('*.py'))


def test_browser_test_skips_without_chromium_unless_required():
    "A user's machine without chromium skips the browser test with the apt packages named; CI turns that into a failure"
    run = lambda **env: subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider',
                                        str(ROOT/'tests'/'test_viewer_browser.py')], cwd=ROOT, capture_output=True,
                                       text=True, env={**os.environ, 'CHROMIUM': '/nonexistent/chromium', **env})
    skipped = run(SEMIVL_REQUIRE_BROWSER='0')
    assert skipped.returncode == 0 and '1 skipped' in skipped.stdout, skipped.stdout
    assert 'chromium-driver' in skipped.stdout
    required = run(SEMIVL_REQUIRE_BROWSER='1')
    assert required.returncode == 1 and '1 failed' in required.stdout, required.stdout
    assert (ROOT/'.ci'/'run').read_text().count('SEMIVL_REQUIRE_BROWSER=1') == 1


def _run_cells(nb: Path) -> list[str]:
    "Sources of the code cells nbdev_test runs (not `#| eval: false`)"
    import json
    srcs = [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code']
    return [s for s in srcs if not re.search(r'^#\|\s*eval:\s*false', s, re.M)]


def _scratch_notebooks() -> list[str]:
    "Notebooks whose run cells make temp folders"
    return [nb.stem for nb in sorted((ROOT/'nbs').glob('*.ipynb')) if any('mkdtemp' in s for s in _run_cells(nb))]


def test_notebooks_that_make_temp_folders_fail_if_they_leave_any():
    """nbdev_test (every test run, every user) fails a notebook that leaves temp folders behind: each notebook that makes
    them opens a `NotebookScratch` before its first one and asserts it empty in its last cell (00_core shows it failing)"""
    names = _scratch_notebooks()
    assert len(names) >= 5, names    # the scan finds the notebooks it is meant to check
    for name in names:
        cells = _run_cells(ROOT/'nbs'/f'{name}.ipynb')
        first = next(i for i, s in enumerate(cells) if 'mkdtemp' in s)
        opened = [m.group(1) for s in cells[:first] for m in re.finditer(r'^(\w+) = NotebookScratch\(\)', s, re.M)]
        assert len(opened) == 1, f"{name}: no `x = NotebookScratch()` cell before its first mkdtemp"
        assert re.search(rf'^{opened[0]}\.assert_empty\(\)', cells[-1], re.M), f"{name}: last cell must assert it empty"
