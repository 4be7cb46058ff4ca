"""The toy world generator: determinism and the on-disk layout contract read by the data loader."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semivl.toyworld import CLASSES, SIZE, SPLIT_SIZES, VERSION, ensure_toyworld, render_scene, write_toyworld


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a = write_toyworld(tmp_path/'a', n_train=40, n_val=10, split_sizes=(20,), progress=False)
    b = write_toyworld(tmp_path/'b', n_train=40, n_val=10, split_sizes=(20,), progress=False)
    da, db = _digest(a), _digest(b)
    assert len(da) == 2 * 50 + 4  # images + masks, classes.json, val.txt, labeled.txt, unlabeled.txt
    assert da == db
    c = write_toyworld(tmp_path/'c', n_train=40, n_val=10, split_sizes=(20,), seed=1, progress=False)
    assert _digest(c)['images/train/train_00000.png'] != da['images/train/train_00000.png']


def test_scene_stream_is_per_index():
    "Scene i depends only on (seed, split, i): a smaller world is a prefix of a larger one"
    img, mask, _ = render_scene(np.random.default_rng([0, 0, 5]))
    img2, mask2, _ = render_scene(np.random.default_rng([0, 0, 5]))
    assert (img == img2).all() and (mask == mask2).all()


@pytest.fixture(scope='module')
def world():
    return ensure_toyworld()


def _lines(root, rel):
    return [l for l in (root/rel).read_text().splitlines() if l.strip()]


def test_default_world_layout(world):
    assert world.name == f'v{VERSION}'
    meta = json.loads((world/'classes.json').read_text())
    assert meta['name'] == 'toyworld' and meta['version'] == VERSION and meta['ignore_index'] == 255
    assert meta['classes'] == list(CLASSES) and meta['classes'][0] == 'background' and len(meta['classes']) == 11
    assert len(meta['definitions']) == 11 and all(d.endswith('.') for d in meta['definitions'])
    assert len(meta['palette']) == 11 and all(len(c) == 3 for c in meta['palette'])
    train = {p.name for p in (world/'images/train').glob('*.png')}
    assert len(train) == 2000 and len(list((world/'images/val').glob('*.png'))) == 300
    val = _lines(world, 'splits/val.txt')
    assert len(val) == 300
    for n in SPLIT_SIZES:
        lab, unl = _lines(world, f'splits/{n}/labeled.txt'), _lines(world, f'splits/{n}/unlabeled.txt')
        assert len(lab) == n and len(unl) == 2000 - n and not set(lab) & set(unl)
        assert {l.split(' ')[0].split('/')[-1] for l in lab + unl} == train
    for line in {l for n in SPLIT_SIZES for l in _lines(world, f'splits/{n}/labeled.txt')} | set(val):
        img, mask = line.split(' ')
        assert img.startswith('images/') and mask.startswith('masks/') and Path(img).name == Path(mask).name
        x, y = np.array(Image.open(world/img)), np.array(Image.open(world/mask))
        assert x.shape == (SIZE, SIZE, 3) and x.dtype == np.uint8 and y.shape == (SIZE, SIZE) and y.dtype == np.uint8
        assert set(np.unique(y).tolist()) <= set(range(len(CLASSES))) | {255}


def test_small_split_covers_every_class(world):
    seen = set()
    for line in _lines(world, 'splits/20/labeled.txt'):
        seen |= set(np.unique(np.array(Image.open(world/line.split(' ')[1]))).tolist())
    assert seen == set(range(len(CLASSES)))


def test_every_unlabeled_file_exists(world):
    for line in _lines(world, f'splits/{SPLIT_SIZES[0]}/unlabeled.txt'):
        img, mask = line.split(' ')
        assert (world/img).is_file() and (world/mask).is_file()


def test_make_toyworld_writes_a_variant_only_into_its_own_folder(tmp_path):
    "data_scripts/make_toyworld.py with world knobs: the folder's classes.json records them, and the default cache is refused"
    import subprocess, sys
    script = Path(__file__).resolve().parents[1]/'data_scripts'/'make_toyworld.py'
    small = ['--n-train', '6', '--n-val', '2', '--split-sizes', '2', '--no-progress']
    r = subprocess.run([sys.executable, str(script), '--root', str(tmp_path/'big'), '--radius', '10', '20',
                        '--texture-contrast', '60', *small], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path/'big'/'classes.json').read_text())['world'] == {'radius': [10, 20], 'texture_contrast': 60}
    default = write_toyworld(tmp_path/'default', n_train=6, n_val=2, split_sizes=(2,), progress=False)
    big_mask = np.array(Image.open(tmp_path/'big'/'masks'/'train'/'train_00000.png'))
    assert (big_mask > 0).sum() > (np.array(Image.open(default/'masks'/'train'/'train_00000.png')) > 0).sum()
    r = subprocess.run([sys.executable, str(script), '--illumination', '.2', *small], capture_output=True, text=True)
    assert r.returncode != 0 and 'needs its own --root' in r.stderr
