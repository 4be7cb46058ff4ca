"""The viewer renders in a real JupyterLab: start a server, open nbs/viewer.ipynb in headless chromium, run all cells,
wait for the widget, assert on its DOM, save a screenshot. Without chromium + chromedriver the test is skipped
with the apt packages to install; `.ci/run` installs them and sets SEMIVL_REQUIRE_BROWSER=1, which turns that skip
into a failure, so CI never skips it.

Also a script: `python tests/test_viewer_browser.py nbs/images/viewer.png` regenerates the docs screenshot."""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NB = REPO/'nbs'/'viewer.ipynb'
CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('CHROMEDRIVER', '/usr/bin/chromedriver')
INSTALL_HINT = ('install Debian/Ubuntu packages chromium and chromium-driver (apt-get install chromium chromium-driver), '
                'or point CHROMIUM / CHROMEDRIVER at your own binaries')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run', '--window-size=1500,1300']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f'jupyter lab exited with code {proc.returncode}')
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: pass
        time.sleep(.3)
    raise TimeoutError(f'jupyter lab did not answer at {url} within {timeout}s')


def _with_params(src: Path, dst: Path, params: dict):
    "Copy the notebook, with `params` assigned in a cell right after the 'parameters' cell (as papermill does)"
    import nbformat
    nb = nbformat.read(src, as_version=4)
    if params:
        k = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
        nb.cells.insert(k + 1, nbformat.v4.new_code_cell('\n'.join(f'{n} = {v!r}' for n, v in params.items())))
    nbformat.write(nb, dst)


def render_viewer(screenshot: Path, timeout: float = 80., params: dict | None = None) -> dict:
    "Serve a copy of nbs/viewer.ipynb, run it in headless chromium, return DOM facts; writes `screenshot`"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    for exe in (CHROMIUM, CHROMEDRIVER):
        assert Path(exe).exists(), f'{exe} is missing: {INSTALL_HINT}'
    work = Path(tempfile.mkdtemp(prefix='semivl-viewer-browser-'))
    _with_params(NB, work/'viewer.ipynb', params or {})  # the UI autosaves: never run the repo's copy
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
               JUPYTER_CONFIG_DIR=str(work/'.jupyter'), JUPYTER_RUNTIME_DIR=str(work/'.runtime'),
               JUPYTERLAB_SETTINGS_DIR=str(work/'.lab-settings'), JUPYTERLAB_WORKSPACES_DIR=str(work/'.lab-ws'))
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', '--allow-root', f'--ServerApp.root_dir={work}', '--ServerApp.open_browser=False',
           '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
           '--LabApp.expose_app_in_browser=True', '--ServerApp.disable_check_xsrf=False']
    news = work/'.lab-settings'/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True); news.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    log = open(work/'server.log', 'w')
    server = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    user_data = tempfile.mkdtemp(prefix='semivl-chromium-')
    driver = None
    t0 = time.time()
    try:
        base = f'http://127.0.0.1:{port}'
        _wait_http(f'{base}/api/status?token={token}', server, timeout=40)
        opts = webdriver.ChromeOptions(); opts.binary_location = CHROMIUM
        for f in FLAGS + [f'--user-data-dir={user_data}']: opts.add_argument(f)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        driver.get(f'{base}/lab/tree/viewer.ipynb?token={token}')
        left = lambda: max(5., timeout - (time.time() - t0))
        wait = lambda cond: WebDriverWait(driver, left(), poll_frequency=.25).until(cond)
        # the notebook panel is open and its kernel is ready
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, '.jp-NotebookPanel .jp-Cell'))
        wait(lambda d: d.execute_script(
            "const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
            "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
            " && w.sessionContext.session.kernel.connectionStatus === 'connected');"))
        # Run > Run All Cells, through the same command the menu item triggers
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, '.semivl-viewer-grid img'))
        wait(lambda d: d.execute_script(
            "const im = [...document.querySelectorAll('.semivl-viewer-grid img')];"
            "return im.length >= 7 && im.every(i => i.complete && i.naturalWidth > 0);"))
        time.sleep(.5)
        facts = dict(
            sliders=len(driver.find_elements(By.CSS_SELECTOR, '.widget-slider, .jupyter-widget-slider, .widget-hslider')),
            panel_images=len(driver.find_elements(By.CSS_SELECTOR, '.semivl-viewer-grid img')),
            toggle_buttons=len(driver.find_elements(By.CSS_SELECTOR, '.widget-toggle-button, .jupyter-widgets.widget-toggle-button')),
            panel_size=driver.execute_script("const i=document.querySelector('.semivl-viewer-grid img');"
                                             "return [i.naturalWidth, i.naturalHeight];"),
            text=driver.find_element(By.CSS_SELECTOR, '.jp-NotebookPanel').text,
            errors=len(driver.find_elements(By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')),
            seconds=time.time() - t0)
        # bring the app into view for the screenshot
        driver.execute_script("document.querySelector('.semivl-viewer-grid').closest('.jp-Cell').scrollIntoView({block: 'start'});")
        time.sleep(.3)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return facts
    except Exception:
        log.flush()
        sys.stderr.write((work/'server.log').read_text()[-3000:])
        if driver is not None:
            try: driver.save_screenshot(str(screenshot.with_name('failure-' + screenshot.name)))
            except Exception: pass
        raise
    finally:
        if driver is not None: driver.quit()
        server.terminate()
        try: server.wait(10)
        except subprocess.TimeoutExpired: server.kill()
        log.close()
        shutil.rmtree(user_data, ignore_errors=True)


@pytest.mark.slow
def test_viewer_renders_in_jupyterlab(tmp_path):
    missing = [exe for exe in (CHROMIUM, CHROMEDRIVER) if not Path(exe).exists()]
    if missing:
        msg = f"browser test needs {', '.join(missing)}: {INSTALL_HINT}"
        if os.environ.get('SEMIVL_REQUIRE_BROWSER') == '1': pytest.fail(msg + ' (SEMIVL_REQUIRE_BROWSER=1: no skipping)')
        pytest.skip(msg)
    shot = tmp_path/'viewer.png'
    facts = render_viewer(shot)
    assert facts['panel_images'] >= 7, facts          # image, MaskCLIP, student, confidence, kept, target, disagreement
    assert facts['sliders'] >= 3, facts               # image picker, two thresholds, opacity
    assert facts['toggle_buttons'] >= 11, facts       # one per toy-world class
    assert min(facts['panel_size']) >= 64, facts
    for word in ('student thr', 'guidance thr', 'kept', 'target', 'disagreement'): assert word in facts['text'], word
    assert shot.exists() and shot.stat().st_size > 10_000
    print(f"rendered in {facts['seconds']:.1f}s; screenshot {shot}")


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(description='Regenerate the docs screenshot of the viewer in a real JupyterLab')
    ap.add_argument('out', nargs='?', default=str(REPO/'nbs'/'images'/'viewer.png'))
    ap.add_argument('--checkpoint', help='toy training checkpoint (e.g. runs/toyworld-92-semivl-s0/model.pt)')
    ap.add_argument('--ranking', help="evaluate.ipynb's per_image.csv on the same split, to sort the images by")
    ap.add_argument('--split', default='val')
    a = ap.parse_args()
    params = dict(split=a.split, **{k: str(Path(v).resolve()) for k, v in (('checkpoint', a.checkpoint), ('ranking', a.ranking)) if v})
    facts = render_viewer(Path(a.out), timeout=240., params=params)
    print({k: v for k, v in facts.items() if k != 'text'}); print('wrote', a.out)
