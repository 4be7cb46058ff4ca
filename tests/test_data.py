"""Data pipeline on tiny fake copies of the four official layouts (and a custom/toy folder): every mode through
the DataLoader, label conventions, shared geometry of the views, seeding, every bad-input error, data_scripts/."""
import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semivl.core import seed_everything
from semivl.transforms import normalize_batch
from semivl.data import (DATASETS, DataError, SemiDataset, build_loader, dataset_info, fake_dataset, read_split,
                         split_partner, write_split, _coord_image)
from semivl.prepare import check_dataset, class_balanced_split, make_split, official_split_urls

ROOT = Path(__file__).resolve().parents[1]
SIZE = (48, 64)   # fake image (h, w)


@pytest.fixture(scope='module')
def fakes(tmp_path_factory):
    base = tmp_path_factory.mktemp('fake')
    return {n: fake_dataset(base/n, n, n_train=8, n_val=2, size=SIZE) for n in ('pascal', 'coco', 'ade', 'cityscapes', 'custom')}


def script(name):
    "Import data_scripts/<name>.py as a module"
    spec = importlib.util.spec_from_file_location(name, ROOT/'data_scripts'/f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- modes through the loader

@pytest.mark.parametrize('name', ['pascal', 'coco', 'ade', 'cityscapes', 'custom'])
def test_modes_through_loader(fakes, name):
    seed_everything(0)
    root, crop = fakes[name], 96
    info = dataset_info(root)
    test_info = DATASETS.get(name)
    if test_info: assert info.rescale == test_info.rescale and info.nclass == test_info.nclass
    du = SemiDataset(root, 'train_u', '1_4', crop=crop)
    dl = SemiDataset(root, 'train_l', '1_4', crop=crop, nsample=len(du))
    assert len(dl) == len(du) == 6
    bl = next(iter(build_loader(dl, batch_size=2, num_workers=0)))
    assert bl['img'].shape == (2, 3, crop, crop) and bl['img'].dtype == torch.float32
    assert bl['mask'].shape == (2, crop, crop) and bl['mask'].dtype == torch.int64
    vals = set(bl['mask'].unique().tolist())
    assert vals <= set(range(info.nclass)) | {255} and 255 in vals          # fake masks have a 255 line, crops pad 255
    bu = next(iter(build_loader(du, batch_size=2, num_workers=0)))
    for k in ('img_w', 'img_s1', 'img_s2', 'img_w_other', 'img_s1_other', 'img_s2_other'):
        assert bu[k].shape == (2, 3, crop, crop), k
    for k in ('ignore_mask', 'ignore_mask_other'):
        assert bu[k].shape == (2, crop, crop) and bu[k].dtype == torch.int64 and set(bu[k].unique().tolist()) <= {0, 255}
    for k in ('cutmix_box1', 'cutmix_box2'):
        assert bu[k].shape == (2, crop, crop) and bu[k].dtype == torch.float32 and set(bu[k].unique().tolist()) <= {0., 1.}
    u, o = split_partner(bu)
    assert set(o) == {'img_w', 'img_s1', 'img_s2', 'ignore_mask'} and 'cutmix_box1' in u
    dv = SemiDataset(root, 'val')
    bv = next(iter(build_loader(dv, batch_size=1, num_workers=0)))
    h, w = SIZE
    want = (512, round(w*512/h)) if info.val_short_side else (h, w)          # VOC/ADE: short side 512, mask untouched
    assert bv['img'].shape == (1, 3, *want) and bv['mask'].shape == (1, h, w)
    assert bv['id'][0] == ' '.join(read_split(root/'splits'/'val.txt')[0])


def test_ignore_mask_marks_padding_and_train_l_pads_255(fakes):
    seed_everything(1)
    du = SemiDataset(fakes['coco'], 'train_u', '1_4', crop=200)     # 64 px long side x [0.5, 2] <= 128 < 200: always padded
    for i in range(3):
        u = du[i]
        pad = u['ignore_mask'] == 255
        assert pad.float().mean() > 0.5
        assert (u['img_w'][:, pad] == u['img_w'][:, pad][:, :1]).all()    # padded pixels are all the same (black) value
    dl = SemiDataset(fakes['coco'], 'train_l', '1_4', crop=200)
    m = dl[0]['mask']
    assert (m == 255).float().mean() > 0.5


def test_views_share_geometry(tmp_path):
    root = fake_dataset(tmp_path/'coord', 'custom', 4, 1, size=SIZE)
    for ip, _ in read_split(root/'splits'/'1_4'/'unlabeled.txt'): _coord_image(*SIZE).save(root/ip)
    seed_everything(0)
    ds = SemiDataset(root, 'train_u', '1_4', crop=80)
    ds.strong = lambda im: im                        # photometric part off: what is left is geometry
    same_partner = 0
    for i in range(len(ds)):
        u = ds[i]
        assert torch.equal(u['img_s1'], u['img_w']) and torch.equal(u['img_s2'], u['img_w'])
        blue = u['img_w'][2]                         # 128 inside the image, 0 on padding
        assert torch.equal(u['ignore_mask'] == 255, blue < blue.max() - 1)
        same_partner += torch.equal(u['img_w_other'], u['img_w'])
    assert same_partner < len(ds)                   # the partner is an independent draw


def test_label_remapping(fakes):
    # ADE reduce_zero_label: raw 0 -> 255, raw k -> k-1
    root = fakes['ade']
    ip, mp = read_split(root/'splits'/'val.txt')[0]
    raw = np.array(Image.open(root/mp))
    got = SemiDataset(root, 'val')[0]['mask'].numpy()
    want = np.where(raw == 0, 255, raw.astype(int) - 1)
    assert (raw == 0).any() and np.array_equal(got, want)
    # Cityscapes: raw label ids (7 road, 26 car, 0 unlabeled) map to train ids (0, 13, 255)
    root = fakes['cityscapes']
    pairs = read_split(root/'splits'/'val.txt')
    ids_list = write_split(root/'splits'/'val_ids.txt', [(i, m.replace('labelTrainIds', 'labelIds')) for i, m in pairs])
    a = SemiDataset(root, 'val')[0]['mask']
    b = SemiDataset(root, 'val', split=ids_list)[0]['mask']
    raw = np.array(Image.open(root/pairs[0][1].replace('labelTrainIds', 'labelIds')))
    assert torch.equal(a, b) and raw.max() > 18 and a.max() == 255 and a[a < 255].max() <= 18


def test_toy_preset_from_classes_json(tmp_path):
    root = fake_dataset(tmp_path/'toy', 'custom', 4, 1, size=(64, 64))
    d = json.loads((root/'classes.json').read_text()); d['name'] = 'toyworld'
    (root/'classes.json').write_text(json.dumps(d))
    info = dataset_info(root)
    assert (info.name, info.crop, info.rescale, info.nclass, info.val_short_side) == ('toyworld', 64, 'longside', 11, None)
    b = next(iter(build_loader(SemiDataset(root, 'train_u', '1_4'), batch_size=3, num_workers=0)))
    assert b['img_w'].shape == (3, 3, 64, 64)


# ---------------------------------------------------------------- seeding and sampling

def _first_batch(root, seed, workers):
    return next(iter(build_loader(SemiDataset(root, 'train_u', '1_4', crop=64), 2, num_workers=workers, seed=seed,
                                  persistent_workers=False)))


def test_worker_seeding_is_deterministic(fakes):
    root = fakes['pascal']
    seed_everything(1); a = _first_batch(root, 7, 2)
    seed_everything(2); b = _first_batch(root, 7, 2)       # global state must not matter with workers
    c = _first_batch(root, 8, 2)
    for k in ('img_w', 'img_s1', 'ignore_mask', 'cutmix_box1'): assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a['img_s1'], c['img_s1'])


def test_labeled_repetition_matches_official(fakes):
    ds = SemiDataset(fakes['pascal'], 'train_l', '1_4', nsample=5)
    lab = read_split(fakes['pascal']/'splits'/'1_4'/'labeled.txt')
    assert ds.ids == (lab*3)[:5]


def test_distributed_sampler(fakes, tmp_path):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        dl = build_loader(SemiDataset(fakes['pascal'], 'train_u', '1_4', crop=32), 2, num_workers=0, seed=3)
        assert isinstance(dl.sampler, torch.utils.data.DistributedSampler) and dl.sampler.seed == 3
    finally: dist.destroy_process_group()


def test_class_balanced_split_covers_rare_classes():
    rng = np.random.default_rng(0)
    sets = [{0, int(c)} for c in rng.integers(1, 4, 200)] + [{0, 4}, {0, 5}]   # classes 4 and 5 appear once each
    for seed in range(5):
        idx = class_balanced_split(sets, 6, 6, seed)
        got = set().union(*(sets[i] for i in idx))
        assert got == set(range(6)) and len(set(idx)) == 6
    assert class_balanced_split(sets, 6, 6, 1) == class_balanced_split(sets, 6, 6, 1)


# ---------------------------------------------------------------- bad input: one clear error naming the file

@pytest.fixture
def voc(tmp_path):
    return fake_dataset(tmp_path/'voc', 'pascal', n_train=4, n_val=1, size=SIZE)


def _first(root, f='splits/1_4/labeled.txt'): return read_split(root/f)[0]


def test_missing_image_and_mask(voc):
    ip, mp = _first(voc)
    (voc/ip).unlink()
    with pytest.raises(DataError, match=f"image not found: {voc/ip}"): SemiDataset(voc, 'train_l', '1_4')
    with pytest.raises(DataError, match=f"image not found: {voc/ip}"): SemiDataset(voc, 'train_l', '1_4', check_files=False)[0]
    ip, mp = _first(voc, 'splits/val.txt')
    (voc/mp).unlink()
    with pytest.raises(DataError, match=f"mask not found: {voc/mp}"): SemiDataset(voc, 'val')


def test_corrupt_image(voc):
    ip, _ = _first(voc)
    (voc/ip).write_bytes((voc/ip).read_bytes()[:200])           # truncated JPEG
    with pytest.raises(DataError, match=f"cannot read image {voc/ip}"): SemiDataset(voc, 'train_l', '1_4')[0]


def test_size_mismatch(voc):
    ip, mp = _first(voc)
    Image.open(voc/mp).resize((32, 32)).save(voc/mp)
    with pytest.raises(DataError, match=f"mask {voc/mp} is 32x32 but its image is 64x48"): SemiDataset(voc, 'train_l', '1_4')[0]


def test_labels_out_of_range(voc):
    ip, mp = _first(voc)
    m = np.array(Image.open(voc/mp)); m[0, 0] = 37
    Image.fromarray(m).save(voc/mp)
    with pytest.raises(DataError, match=rf"mask {voc/mp} has labels \[37\] outside 0..20"): SemiDataset(voc, 'train_l', '1_4')[0]


def test_bad_split_files(voc):
    f = voc/'splits'/'1_4'/'labeled.txt'
    f.write_text('')
    with pytest.raises(DataError, match=f"split file is empty: {f}"): SemiDataset(voc, 'train_l', '1_4')
    f.write_text('JPEGImages/a.jpg\n')
    with pytest.raises(DataError, match=f"{f}:1: expected 'image_path mask_path'"): SemiDataset(voc, 'train_l', '1_4')
    with pytest.raises(DataError, match="split file not found"): SemiDataset(voc, 'train_l', '92')


def test_split_asking_for_more_labels_than_exist(voc):
    with pytest.raises(DataError, match="asks for 10 labeled images but only 4 training images exist"):
        make_split(voc, 10, progress=False)


# ---------------------------------------------------------------- checker and data_scripts/

def test_check_dataset_reports_everything(voc):
    rep = check_dataset(voc, progress=False)
    assert rep.ok and rep.n_images == 5 and rep.n_masks == 5 and rep.class_pixels.sum() > 0
    ip, mp = _first(voc, 'splits/1_4/unlabeled.txt')
    (voc/ip).unlink()
    m = np.array(Image.open(voc/_first(voc)[1])); m[1, 1] = 99; Image.fromarray(m).save(voc/_first(voc)[1])
    rep = check_dataset(voc, progress=False)
    assert len(rep.problems) == 2 and 'image not found' in str(rep) and 'labels [99]' in str(rep)
    assert script('check_dataset').main(script('check_dataset').get_args_parser().parse_args(['--root', str(voc), '--quiet'])) == 1


def test_make_splits_script(fakes, tmp_path, capsys):
    root = fake_dataset(tmp_path/'ms', 'ade', n_train=12, n_val=1, size=SIZE)
    ms = script('make_splits')
    with pytest.raises(FileExistsError, match="1_4 already holds a split"):   # the fake dataset ships a '1_4' split
        ms.main(ms.get_args_parser().parse_args(['--root', str(root), '--sizes', '3', '1_4', '--seed', '2', '--quiet']))
    ms.main(ms.get_args_parser().parse_args(['--root', str(root), '--sizes', '3', '1_4', '--seed', '2', '--quiet', '--overwrite']))
    for name, n in (('3', 3), ('1_4', 3)):
        lab, unl = read_split(root/'splits'/name/'labeled.txt'), read_split(root/'splits'/name/'unlabeled.txt')
        assert len(lab) == n and len(unl) == 9 and not set(lab) & set(unl)
    assert (root/'splits'/'3'/'labeled.txt').read_text() == (root/'splits'/'1_4'/'labeled.txt').read_text()  # same seed, same n
    # running it again with another seed refuses to replace split '3'; --name-format or --overwrite are the ways out
    before = (root/'splits'/'3'/'labeled.txt').read_text()
    with pytest.raises(FileExistsError, match="already holds a split"):
        ms.main(ms.get_args_parser().parse_args(['--root', str(root), '--sizes', '3', '--seed', '5', '--quiet']))
    assert (root/'splits'/'3'/'labeled.txt').read_text() == before
    ms.main(ms.get_args_parser().parse_args(['--root', str(root), '--sizes', '3', '--seed', '5', '--quiet', '--name-format', '{size}_s{seed}']))
    assert len(read_split(root/'splits'/'3_s5'/'labeled.txt')) == 3
    ms.main(ms.get_args_parser().parse_args(['--root', str(root), '--sizes', '3', '--seed', '5', '--quiet', '--overwrite']))
    assert (root/'splits'/'3'/'labeled.txt').read_text() == (root/'splits'/'3_s5'/'labeled.txt').read_text()


def test_convert_cityscapes_script(fakes, tmp_path):
    root = tmp_path/'cs'
    import shutil; shutil.copytree(fakes['cityscapes'], root)
    ids = sorted((root/'gtFine').rglob('*_labelIds.png')); trains = [Path(str(f).replace('labelIds', 'labelTrainIds')) for f in ids]
    want = [np.array(Image.open(t)) for t in trains]
    for t in trains: t.unlink()
    cs = script('convert_cityscapes')
    cs.main(cs.get_args_parser().parse_args(['--root', str(root), '--quiet']))
    for t, w in zip(trains, want): assert np.array_equal(np.array(Image.open(t)), w)


def test_convert_coco_script(tmp_path):
    root = tmp_path/'coco'; (root/'annotations').mkdir(parents=True); (root/'val2017').mkdir()
    Image.new('RGB', (20, 10)).save(root/'val2017'/'000000000001.jpg')
    crowd_counts = [10*15, 10*3, 10*2]              # column-major: 15 empty columns, 3 crowd columns, 2 empty
    ann = {'images': [{'id': 1, 'file_name': '000000000001.jpg', 'height': 10, 'width': 20}],
           'categories': [{'id': i, 'name': f'c{i}'} for i in (90, 1, 3)],          # -> 1: 1, 3: 2, 90: 3
           'annotations': [{'image_id': 1, 'category_id': 3, 'iscrowd': 0, 'segmentation': [[0, 0, 10, 0, 10, 10, 0, 10]]},
                           {'image_id': 1, 'category_id': 90, 'iscrowd': 0, 'segmentation': [[5, 0, 8, 0, 8, 10, 5, 10]]},
                           {'image_id': 1, 'category_id': 1, 'iscrowd': 1, 'segmentation': {'counts': crowd_counts, 'size': [10, 20]}}]}
    (root/'annotations'/'instances_val2017.json').write_text(json.dumps(ann))
    cc = script('convert_coco')
    cc.main(cc.get_args_parser().parse_args(['--root', str(root), '--splits', 'val', '--write-lists', '--quiet']))
    m = np.array(Image.open(root/'masks'/'000000000001.png'))
    assert m.shape == (10, 20)
    assert (m[2:8, 1:4] == 2).all() and (m[2:8, 6:8] == 3).all()   # later instance (cat 90 -> 3) painted over cat 3 -> 2
    assert (m[:, 15:18] == 255).all() and (m[:, 12:15] == 0).all() and (m[:, 18:] == 0).all()
    assert read_split(root/'splits'/'val.txt') == [('val2017/000000000001.jpg', 'masks/000000000001.png')]


def test_convert_voc_sbd_script(tmp_path):
    sbd, voc = tmp_path/'benchmark_RELEASE', tmp_path/'voc'
    (sbd/'dataset'/'cls').mkdir(parents=True); (voc/'SegmentationClass').mkdir(parents=True)
    (voc/'ImageSets'/'Segmentation').mkdir(parents=True)
    for i in ('a', 'b', 'c'): (sbd/'dataset'/'cls'/f'{i}.mat').write_bytes(b'')
    (sbd/'dataset'/'train.txt').write_text('a\nb\n'); (sbd/'dataset'/'val.txt').write_text('c\n')
    (voc/'ImageSets'/'Segmentation'/'train.txt').write_text('d\n'); (voc/'ImageSets'/'Segmentation'/'val.txt').write_text('c\n')
    orig = np.full((4, 5), 255, np.uint8); Image.fromarray(orig).save(voc/'SegmentationClass'/'a.png')   # an original VOC mask
    fake_mat = lambda p: {'GTcls': _mat_struct(np.full((4, 5), 1, np.uint8))}      # stands in for scipy.io.loadmat
    sv = script('convert_voc_sbd')
    sv.main(sv.get_args_parser().parse_args(['--sbd', str(sbd), '--root', str(voc), '--quiet']), loadmat=fake_mat)
    b = Image.open(voc/'SegmentationClass'/'b.png')
    assert b.mode == 'P' and (np.array(b) == 1).all()
    assert (np.array(Image.open(voc/'SegmentationClass'/'a.png')) == 255).all()     # original VOC mask kept
    assert [i for i, _ in read_split(voc/'splits'/'train_aug.txt')] == ['JPEGImages/a.jpg', 'JPEGImages/b.jpg', 'JPEGImages/d.jpg']


def _mat_struct(seg):
    "What scipy.io.loadmat returns for SBD's GTcls struct: m['GTcls'][0]['Segmentation'][0] is the class map"
    rec = np.empty((1, 1), dtype=[('Segmentation', object)]); rec[0, 0]['Segmentation'] = seg
    return rec


def test_voc_sbd_without_scipy_says_so(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__
    def no_scipy(name, *a, **k):
        if name.startswith('scipy'): raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', no_scipy)
    with pytest.raises(SystemExit, match='needs scipy: pip install scipy'): script('convert_voc_sbd')._loadmat()


def test_fetch_splits_urls_and_offline_error(tmp_path, monkeypatch):
    urls = official_split_urls('cityscapes', '1_30', 'unimatch')
    assert urls['1_30/unlabeled.txt'] == ('https://raw.githubusercontent.com/LiheYoung/UniMatch/'
                                          '0324f3dd4a22128105a5eb135d2586c0bb3cc647/splits/cityscapes/1_30/unlabeled.txt')
    fs = script('fetch_splits')
    def offline(url, timeout=None): raise urllib.error.URLError('Temporary failure in name resolution')
    monkeypatch.setattr(fs.urllib.request, 'urlopen', offline)
    args = fs.get_args_parser().parse_args(['--dataset', 'voc', '--root', str(tmp_path), '--splits', '92'])
    with pytest.raises(SystemExit, match=r"(?s)cannot download .*semivl/13ee65d.*/splits/pascal/val.txt.*Are you online\?.*92/labeled.txt"):
        fs.main(args)
    assert not (tmp_path/'splits').exists()     # nothing half-written


def test_scripts_have_help(monkeypatch, capsys):
    "Each script runs as __main__ and answers --help (in-process via runpy: a subprocess per script costs ~7 s of imports)"
    import runpy
    for f in ('convert_coco', 'convert_cityscapes', 'convert_voc_sbd', 'fetch_splits', 'make_splits', 'check_dataset'):
        monkeypatch.setattr(sys, 'argv', [f'{f}.py', '--help'])
        with pytest.raises(SystemExit) as e: runpy.run_path(str(ROOT/'data_scripts'/f'{f}.py'), run_name='__main__')
        assert e.value.code == 0 and 'usage:' in capsys.readouterr().out, f


def test_script_runs_from_the_command_line(fakes):
    r = subprocess.run([sys.executable, str(ROOT/'data_scripts'/'check_dataset.py'), '--root', str(fakes['custom']), '--quiet'],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and '0 problem(s)' in r.stdout and 'class histogram' in r.stdout, r.stderr


def test_real_toyworld_layout(tmp_path):
    "The toy world generator's output (semivl.toyworld) loads in every mode and passes the checker"
    toyworld = pytest.importorskip('semivl.toyworld')
    root = toyworld.write_toyworld(tmp_path/'toy', n_train=24, n_val=3, split_sizes=(4,), progress=False)
    info = dataset_info(root)
    assert (info.name, info.nclass, info.crop) == ('toyworld', 11, 64)
    split = next(p.name for p in (root/'splits').iterdir() if p.is_dir())
    du = SemiDataset(root, 'train_u', split)
    b = next(iter(build_loader(du, 4, num_workers=0)))
    assert b['img_w'].shape == (4, 3, 64, 64) and b['img_s1_other'].shape == (4, 3, 64, 64)
    x = next(iter(build_loader(SemiDataset(root, 'train_l', split, nsample=len(du)), 4, num_workers=0)))
    assert x['mask'].shape == (4, 64, 64) and x['mask'].max() <= 255
    v = SemiDataset(root, 'val')[0]
    assert v['img'].shape == (3, 128, 128) and v['mask'].shape == (128, 128)   # val: the whole 128-px scene
    rep = check_dataset(root, progress=False)
    assert rep.ok, rep.problems
    assert (rep.class_images > 0).sum() >= 6


def test_on_error_skip_warns_counts_and_moves_on(voc):
    ip, _ = _first(voc, 'splits/1_4/unlabeled.txt')
    (voc/ip).write_bytes(b'garbage')
    ds = SemiDataset(voc, 'train_u', '1_4', crop=32, on_error='skip')
    with pytest.warns(UserWarning, match=f"skipped a bad sample \\(1 so far.*cannot read image {voc/ip}"):
        x = ds[0]
    assert x['img_w'].shape == (3, 32, 32) and ds.skipped == 1 and x['n_skipped'] == 1
    assert SemiDataset(voc, 'train_u', '1_4', crop=32, on_error='skip')[1]['n_skipped'] == 0
    for p, _ in read_split(voc/'splits'/'1_4'/'unlabeled.txt'): (voc/p).write_bytes(b'garbage')
    with pytest.warns(UserWarning), pytest.raises(DataError, match='every sample listed in'): ds[0]


def test_uint8_images_normalised_later_match(fakes):
    "uint8=True + normalize_batch gives the default float batch (same seed, workers included)"
    a = _first_batch(fakes['ade'], 3, 2)
    b = next(iter(build_loader(SemiDataset(fakes['ade'], 'train_u', '1_4', crop=64, uint8=True), 2, num_workers=2, seed=3,
                               persistent_workers=False)))
    assert b['img_s1'].dtype == torch.uint8 and b['img_w_other'].dtype == torch.uint8
    nb = normalize_batch(b)
    for k in a:
        if k.startswith('img'): torch.testing.assert_close(nb[k], a[k], atol=1e-5, rtol=0)
        else: assert torch.equal(nb[k], a[k]), k
