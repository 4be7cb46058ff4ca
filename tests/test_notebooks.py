"""The user notebooks end to end through papermill: train.ipynb for each method on the toy world (a few
iterations), evaluate.ipynb on the checkpoint it wrote, and the data error of a real dataset that is not there.
Refusals that stop a notebook before it trains run the notebook's cells in this process (`_refusal`): the same code
as under papermill, without a kernel start per case; one refusal per notebook still goes through papermill."""
import json
import time
from pathlib import Path

import nbformat
import papermill as pm
import pytest

REPO = Path(__file__).resolve().parents[1]
NBS = REPO/'nbs'
TINY = dict(iters=3, batch_size=2, val_limit=6)
SNAPSHOTS = dict(supervised=1, unimatch=1, semivl=2)   # semivl in two chunks: exercises the resume


def _refusal(name: str, **params) -> Exception:
    "Run `nbs/<name>.ipynb`'s code cells here, `params` set after the parameters cell as papermill does; the error it stops with"
    cells = [c for c in nbformat.read(NBS/f'{name}.ipynb', as_version=4).cells if c.cell_type == 'code']
    at = next(i for i, c in enumerate(cells) if 'parameters' in c.metadata.get('tags', []))
    ns = {}
    with pytest.raises(Exception) as e:
        for i, c in enumerate(cells):
            exec(c.source, ns)
            if i == at: ns.update(params)
    return e.value


def _outputs(nb) -> str:
    "All text printed by the executed notebook"
    return '\n'.join(o.get('text', '') if isinstance(o.get('text', ''), str) else ''.join(o['text'])
                     for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if o.get('name') == 'stdout')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "Run train.ipynb once per method; {method: (output notebook, out_dir)}"
    root = tmp_path_factory.mktemp('train')
    runs = {}
    for method in ('supervised', 'unimatch', 'semivl'):
        out = root/method
        nb = pm.execute_notebook(str(NBS/'train.ipynb'), str(root/f'{method}.ipynb'), kernel_name='python3',
                                 parameters=dict(TINY, method=method, snapshots=SNAPSHOTS[method], out_dir=str(out)), progress_bar=False)
        runs[method] = (nb, out)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize('method', ['supervised', 'unimatch', 'semivl'])
def test_train_notebook_writes_final_metrics(trained, method):
    nb, out = trained[method]
    m = json.loads((out/'metrics.json').read_text())
    assert m['method'] == method and m['dataset'] == 'toyworld' and m['split'] == '92'
    assert m['iterations'] == m['total_iters'] == 3 and m['val_images'] == 6
    assert 0 <= m['miou'] <= 100 and len(m['iou_per_class']) == 11
    assert f"final mIoU {m['miou']:.2f} ({method}" in _outputs(nb)        # the last cell prints it
    assert (out/'model.pt').is_file() and (out/'metrics.csv').is_file()
    rows = (out/'metrics.csv').read_text().splitlines()
    its = [int(r.split(',')[0]) for r in rows[1:]]
    assert rows[0].startswith('it,') and its == sorted(set(its)) and its[-1] == 3   # one fresh log, to the end
    n_png = sum(1 for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {}))
    assert n_png == 4 + 2 * SNAPSHOTS[method]     # batch grid, (curves + snapshot) per chunk, last dump, IoU bars, pseudo-labels
    pl = json.loads((out/'pseudo_labels.json').read_text())   # measured on val_limit unlabeled images, every class + objects
    assert pl['images'] == 6 and pl['thresholds'] == {'student': 0.95, 'guidance': 0.9} and len(pl['rows']) == 12
    assert pl['rows'][-1]['class'] == 'objects' and 0 <= pl['rows'][-1]['guidance coverage'] <= 100
    assert "guidance labels (conf >= 0.9): cover" in _outputs(nb) and "of the object pixels" in _outputs(nb)
    chunk = -(-3 // SNAPSHOTS[method])                                  # debug dumps every chunk length
    assert sorted(p.name for p in (out/'debug').glob('it*.npz')) == [f'it{i:06d}.npz' for i in range(chunk, 4, chunk)]
    if method == 'semivl': assert 'train/loss_guidance_fp' in rows[0]
    if method == 'supervised': assert 'train/loss_s1' not in rows[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    images = {}
    for f in (out/'tb').glob('events.out.tfevents.*'):    # the pseudo-label panels of each snapshot
        acc = EventAccumulator(str(f), size_guidance={'images': 0}).Reload()
        for tag in acc.Tags()['images']: images[tag] = [e.step for e in acc.Images(tag)]
    assert images.get('pseudo-labels/student') == list(range(chunk, 3, chunk)) + [3] and 'pseudo-labels/kept' in images


@pytest.mark.slow
@pytest.mark.parametrize('weights', ['model.pt', 'model.safetensors'])
def test_evaluate_notebook_on_the_trained_checkpoint(trained, tmp_path, weights):
    "The pickled checkpoint and its safetensors twin (weights + JSON settings) evaluate to the training's mIoU"
    _, out = trained['semivl']
    nb = pm.execute_notebook(str(NBS/'evaluate.ipynb'), str(tmp_path/'eval.ipynb'), kernel_name='python3',
                             parameters=dict(checkpoint=str(out/weights), val_limit=6, n_show=2,
                                             out_dir=str(tmp_path)), progress_bar=False)
    ev = json.loads((tmp_path/'eval_metrics.json').read_text())
    tr = json.loads((out/'metrics.json').read_text())
    assert not ev['official'] and ev['num_images'] == 6 and ev['eval_crop'] == 64
    assert abs(ev['miou'] - tr['miou']) < 0.05, (ev['miou'], tr['miou'])   # same weights, same protocol
    assert f"final mIoU {ev['miou']:.2f}" in _outputs(nb)


@pytest.mark.slow
def test_real_dataset_without_data_fails_at_once_with_instructions(tmp_path):
    t0 = time.time()
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(NBS/'train.ipynb'), str(tmp_path/'voc.ipynb'), kernel_name='python3',
                            parameters=dict(dataset='voc', data_root=str(tmp_path/'no_voc')), progress_bar=False)
    msg = str(e.value)
    assert 'DataError' in msg and 'data_scripts/convert_voc_sbd.py' in msg and 'data_scripts/fetch_splits.py' in msg
    assert str(tmp_path/'no_voc'/'splits'/'92'/'labeled.txt') in msg and 'JPEGImages' in msg
    assert e.value.exec_count == 3      # the first code cell after the parameters (and papermill's injected one)
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_evaluate_notebook_on_an_official_format_checkpoint(trained, tmp_path):
    "The trained weights exported under the official mmseg names (as a released best.pth) give the same mIoU"
    import torch
    from semivl.segmentor import official_state_dict
    from semivl.viewer_model import toy_segmentor
    _, out = trained['semivl']
    seg, _, _ = toy_segmentor(out/'model.pt')
    torch.save({'model': official_state_dict(seg)}, tmp_path/'best.pth')
    nb = pm.execute_notebook(str(NBS/'evaluate.ipynb'), str(tmp_path/'eval.ipynb'), kernel_name='python3',
                             parameters=dict(checkpoint=str(tmp_path/'best.pth'), dataset='toy', val_limit=6, n_show=1),
                             progress_bar=False)
    ev = json.loads((tmp_path/'eval_metrics.json').read_text())
    assert ev['official'] and ev['num_images'] == 6
    assert abs(ev['miou'] - json.loads((out/'metrics.json').read_text())['miou']) < 0.05
    assert 'imported official weights' in _outputs(nb)


@pytest.mark.slow
def test_train_notebook_never_overwrites_an_earlier_run(tmp_path):
    out = tmp_path/'toyworld-92-supervised-s0'; out.mkdir()
    (out/'model.pt').write_text('an earlier run')
    run = lambda **p: pm.execute_notebook(str(NBS/'train.ipynb'), str(tmp_path/'o.ipynb'), kernel_name='python3',
                                          parameters=dict(TINY, method='supervised', out_dir=str(out), **p),
                                          progress_bar=False)
    err = _refusal('train', **TINY, method='supervised', out_dir=str(out))
    assert type(err).__name__ == 'RunExistsError' and 'resume=True' in str(err) and 'overwrite=True' in str(err), err
    assert (out/'model.pt').read_text() == 'an earlier run' and not (out/'metrics.csv').exists()
    run(overwrite=True)
    moved = list(tmp_path.glob('toyworld-92-supervised-s0.old-*'))
    assert len(moved) == 1 and (moved[0]/'model.pt').read_text() == 'an earlier run'
    assert json.loads((out/'metrics.json').read_text())['iterations'] == 3


@pytest.mark.slow
@pytest.mark.parametrize('bad, words', [(dict(val='vall'), ("DataError", "'vall'", "split files in")),
                                        (dict(val_limit=-1), ('ValueError', '>= 1'))])
def test_evaluate_notebook_refuses_a_typo(trained, tmp_path, bad, words):
    "A mistyped split or a limit below 1 stops the evaluation; it never evaluates something else or nothing"
    _, out = trained['supervised']
    err = _refusal('evaluate', checkpoint=str(out/'model.pt'), out_dir=str(tmp_path), **bad)
    for w in words: assert w in f'{type(err).__name__}: {err}', (w, str(err)[-500:])
    assert not (tmp_path/'eval_metrics.json').exists()


@pytest.mark.slow
def test_viewer_ranks_images_by_the_evaluate_notebooks_per_image_miou(trained, tmp_path):
    "evaluate.ipynb writes per_image.csv; the viewer sorted by its mIoU (high first) walks the images in that order"
    import csv
    from semivl.viewer import toy_viewer
    _, out = trained['semivl']
    pm.execute_notebook(str(NBS/'evaluate.ipynb'), str(tmp_path/'eval.ipynb'), kernel_name='python3',
                        parameters=dict(checkpoint=str(out/'model.safetensors'), val_limit=8, n_show=1,
                                        out_dir=str(tmp_path)), progress_bar=False)
    rows = list(csv.DictReader(open(tmp_path/'per_image.csv')))
    assert len(rows) == 8 and {'miou', 'acc', 'kept', 'guidance_agree'} <= set(rows[0])
    viewer = toy_viewer('val', checkpoint=out/'model.safetensors', image_metrics=tmp_path/'per_image.csv')
    viewer.sort_by.value = 'miou'; viewer.high_first.value = True
    seen = []
    for r in range(len(viewer.order)):
        viewer.index.value = r; seen.append(viewer.image_index)
    want = sorted((i for i, row in enumerate(rows) if row['miou'] not in ('', 'nan')),
                  key=lambda i: -float(rows[i]['miou']))
    assert [float(rows[i]['miou']) for i in seen] == [float(rows[i]['miou']) for i in want]
    assert set(seen) == set(want)
    viewer.index.value = 0
    assert f'rank 1/{len(want)} by miou' in viewer.status.value
    lo = sorted(float(rows[i]['miou']) for i in want)[len(want) // 2]
    viewer.keep.value = (lo, viewer.keep.max)                   # filter: only the better half
    assert viewer.order and all(float(rows[i]['miou']) >= lo - 1e-6 for i in viewer.order)


@pytest.mark.slow
def test_train_notebook_refuses_a_mistyped_toy_data_root(tmp_path):
    "A data_root that holds no toy world stops the run at once; nothing is generated at the typo"
    typo = tmp_path/'toyworlld'
    err = _refusal('train', **TINY, data_root=str(typo), out_dir=str(tmp_path/'run'))
    assert type(err).__name__ == 'FileNotFoundError' and 'a typo?' in str(err), err
    assert not typo.exists() and not (tmp_path/'run').exists()


@pytest.mark.slow
@pytest.mark.parametrize('schedule', [dict(iters=7), dict(epochs=2)])
def test_train_notebook_runs_the_whole_schedule_over_several_epochs(tmp_path, schedule):
    "More than one epoch of a small world: the notebook trains exactly `schedule_length` iterations (iters or epochs)"
    from semivl.toyworld import ensure_toyworld
    from semivl.train import schedule_length
    from semivl.train_config import TrainCfg
    world = ensure_toyworld(tmp_path/'world', n_train=30, n_val=4, split_sizes=(20,), progress=False)  # 10 unlabeled
    pm.execute_notebook(str(NBS/'train.ipynb'), str(tmp_path/'o.ipynb'), kernel_name='python3', progress_bar=False,
                        parameters=dict(data_root=str(world), split=20, method='unimatch', batch_size=2, snapshots=1,
                                        val_limit=2, out_dir=str(tmp_path/'run'), **schedule))
    m = json.loads((tmp_path/'run'/'metrics.json').read_text())
    cfg = TrainCfg.preset('toy').update(**schedule, **({'iters': None} if 'epochs' in schedule else {}))
    epochs, total = schedule_length(cfg, 10 // 2)
    assert epochs == 2 and m['iterations'] == m['total_iters'] == total == 10


@pytest.mark.slow
@pytest.mark.parametrize('change', [dict(split=46), dict(method='unimatch')])
def test_resume_refuses_another_run(trained, change):
    "resume=True after changing the split or the method stops with both settings named; the run is left as it was"
    _, out = trained['supervised']
    before = (out/'last.pt').read_bytes()
    err = _refusal('train', **{**TINY, 'method': 'supervised', 'snapshots': SNAPSHOTS['supervised'], 'out_dir': str(out),
                               'resume': True, **change})
    key, new = next(iter(change.items()))
    assert type(err).__name__ == 'ConfigError' and 'belongs to another run' in str(err), err
    assert key in str(err) and str(new) in str(err)
    assert (out/'last.pt').read_bytes() == before


@pytest.mark.slow
def test_evaluate_notebook_checks_that_the_model_fits_the_data(trained, tmp_path):
    "A checkpoint trained on other classes, or on another class count, stops before evaluating (one message each)"
    import torch
    from semivl.checkpoint import load_checkpoint, save_checkpoint
    _, out = trained['supervised']
    ck = load_checkpoint(out/'model.pt')
    assert ck['class_names'][1] == 'striped red'
    renamed = tmp_path/'renamed.pt'; save_checkpoint(renamed, dict(ck, class_names=['background'] + [f'cls{i}' for i in range(1, 11)]))
    fewer = tmp_path/'three.pt'; save_checkpoint(fewer, dict(ck, model_cfg=dict(ck['model_cfg'], num_classes=3)))
    ev = lambda f, **p: pm.execute_notebook(str(NBS/'evaluate.ipynb'), str(tmp_path/'e.ipynb'), kernel_name='python3',
                                            parameters=dict(checkpoint=str(f), val_limit=2, n_show=1, out_dir=str(tmp_path), **p),
                                            progress_bar=False)
    with pytest.raises(pm.PapermillExecutionError) as e: ev(renamed)     # through papermill, as a user sees it
    assert e.value.ename == 'ValueError' and all(w in e.value.evalue for w in (
        'other classes', "(1, 'cls1', 'striped red')", 'ignore_class_names')), e.value.evalue
    err = _refusal('evaluate', checkpoint=str(fewer), val_limit=2, n_show=1, out_dir=str(tmp_path))
    assert type(err).__name__ == 'ValueError' and 'predicts 3 classes' in str(err) and 'has 11' in str(err), err
    assert not (tmp_path/'eval_metrics.json').exists()
    ev(renamed, ignore_class_names=True)                  # the explicit override evaluates
    assert (tmp_path/'eval_metrics.json').exists()


@pytest.mark.slow
def test_custom_dataset_folder_trains_and_evaluates(tmp_path):
    "Any folder with a classes.json is a dataset (here 5 classes): train.ipynb takes it as `dataset`, evaluate.ipynb reads it back"
    from semivl.data import fake_dataset
    data = fake_dataset(tmp_path/'mydata', 'custom', n_train=8, n_val=3, size=(50, 70), split='2',
                        class_names=['background', 'cat', 'dog', 'car', 'tree'])
    out = tmp_path/'run'
    nb = pm.execute_notebook(str(NBS/'train.ipynb'), str(tmp_path/'o.ipynb'), kernel_name='python3', progress_bar=False,
                             parameters=dict(dataset=str(data), split=2, method='semivl', iters=2, batch_size=2,
                                             snapshots=1, out_dir=str(out)))
    m = json.loads((out/'metrics.json').read_text())
    assert m['dataset'] == 'custom' and len(m['iou_per_class']) == 5 and m['iterations'] == m['total_iters'] == 2
    assert 'custom: 5 classes at' in _outputs(nb) and 'MaskCLIP offsets, calibrated per class' in _outputs(nb)
    pm.execute_notebook(str(NBS/'evaluate.ipynb'), str(tmp_path/'e.ipynb'), kernel_name='python3', progress_bar=False,
                        parameters=dict(checkpoint=str(out/'model.safetensors'), n_show=1))
    ev = json.loads((out/'eval_metrics.json').read_text())
    assert ev['num_images'] == 3 and abs(ev['miou'] - m['miou']) < 0.05


@pytest.fixture
def small_world(tmp_path):
    "A 30-image toy world (split 20: 20 labeled, 10 unlabeled) that a test may damage"
    from semivl.toyworld import ensure_toyworld
    return ensure_toyworld(tmp_path/'world', n_train=30, n_val=4, split_sizes=(20,), progress=False)


@pytest.mark.slow
def test_labeled_masks_that_are_all_ignore_stop_the_run_before_any_training(small_world, tmp_path):
    "check_dataset names every all-ignore labeled mask; train.ipynb refuses to start and writes no model"
    from PIL import Image
    from semivl.data import read_split
    from semivl.prepare import check_dataset
    labeled = read_split(small_world/'splits'/'20'/'labeled.txt')
    for _, mp in labeled: Image.new('L', Image.open(small_world/mp).size, 255).save(small_world/mp)
    rep = check_dataset(small_world, progress=False)
    assert sum('only ignore (255) pixels' in p for p in rep.problems) == len(labeled)
    err = _refusal('train', **TINY, data_root=str(small_world), split=20, out_dir=str(tmp_path/'run'))
    assert type(err).__name__ == 'ConfigError' and 'holds only ignore (255)' in str(err), err
    assert not (tmp_path/'run'/'model.pt').exists() and not (tmp_path/'run'/'metrics.csv').exists()


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['rgb', 'size', 'truncated'])
def test_a_bad_labeled_mask_is_named_before_training(small_world, tmp_path, damage):
    "The guidance calibration reads the labeled masks through the checked loader: the bad file is named, nothing trains"
    from PIL import Image
    from semivl.data import read_split
    _, mp = read_split(small_world/'splits'/'20'/'labeled.txt')[3]
    path = small_world/mp
    if damage == 'rgb': Image.open(path).convert('RGB').save(path)
    elif damage == 'size': Image.open(path).resize((40, 40)).save(path)
    else: path.write_bytes(path.read_bytes()[:60])
    err = _refusal('train', **TINY, data_root=str(small_world), split=20, out_dir=str(tmp_path/'run'))
    assert type(err).__name__ == 'DataError' and mp in str(err), (type(err), err)
    assert not (tmp_path/'run'/'model.pt').exists() and not (tmp_path/'run'/'metrics.csv').exists()


@pytest.mark.slow
def test_a_data_folder_without_classes_json_as_toy_data_root_is_refused(tmp_path):
    "A folder of the user's own images given as the toy world's data_root: one message with the custom route; nothing written"
    data = tmp_path/'photos'; data.mkdir(); (data/'a.jpg').write_bytes(b'not really')
    err = _refusal('train', **TINY, data_root=str(data), out_dir=str(tmp_path/'run'))
    assert type(err).__name__ == 'DataError' and 'no classes.json' in str(err) and f'-p dataset {data}' in str(err), err
    assert sorted(p.name for p in data.iterdir()) == ['a.jpg'] and not (tmp_path/'run').exists()
