"""How much the labels matter on the toy world, and what the unlabeled losses can draw on.

For each seed it trains, with the toy preset and `--iters` iterations on one labeled split:
  * `supervised` on the split's labels, `unimatch` and `semivl` with its unlabeled images;
  * `oracle`: supervised on *every* training image's label (the ceiling semi-supervision could approach).
Then it prints, per run: val mIoU, the colour-merged mIoU (stripes and dots of one colour as one class: what is left
when texture is perfect) and the texture accuracy within colour-correct object pixels; and, on 64-px tiles of
unlabeled images, how many object pixels the student keeps as pseudo-labels (confidence >= 0.95) and how accurate they
are. The MaskCLIP guidance's labels (confidence >= 0.9) get the same read-out.

    python benchmarks/toy_headroom.py --iters 1600 --seeds 0 1 --methods supervised oracle unimatch semivl
    python benchmarks/toy_headroom.py --data-root ~/worlds/big --split 92 --methods supervised oracle   # a variant world
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from semivl.core import seed_everything
from semivl.data import build_loader, dataset_info, semi_datasets
from semivl.evaluate import ConfusionMatrix, predict
from semivl.segmentor import ModelCfg, SemiVLSegmentor, fit_guidance_bg_bias
from semivl.text import dataset_text
from semivl.toyclip import load_toy_clip
from semivl.toyworld import ensure_toyworld, load_split
from semivl.train import train
from semivl.train_config import TrainCfg
from semivl.transforms import normalize_batch

colour_of = lambda c: (c + 1) // 2   # toy classes: 0 background, then (striped, dotted) per colour


def oracle_world(root: Path, out: Path, split: str) -> Path:
    "A view of the world (symlinks) whose split 'all' labels every training image of `split`"
    w = out/'world_all'
    (w/'splits'/'all').mkdir(parents=True, exist_ok=True)
    for name in ('images', 'masks', 'classes.json'):
        if not (w/name).exists(): os.symlink((root/name).resolve(), w/name)
    if not (w/'splits'/'val.txt').exists(): os.symlink((root/'splits'/'val.txt').resolve(), w/'splits'/'val.txt')
    lines = [l for f in ('labeled', 'unlabeled') for l in (root/'splits'/split/f'{f}.txt').read_text().splitlines() if l]
    for f in ('labeled', 'unlabeled'): (w/'splits'/'all'/f'{f}.txt').write_text('\n'.join(lines) + '\n')
    return w


def confusion_stats(mat: torch.Tensor) -> dict:
    "mIoU, colour-merged mIoU, texture accuracy within colour-correct object pixels, per-class IoU (all in %)"
    mat = mat.double()
    iou = mat.diag() / (mat.sum(0) + mat.sum(1) - mat.diag())
    g = torch.tensor([colour_of(c) for c in range(mat.shape[0])])
    merged = torch.zeros(int(g.max()) + 1, int(g.max()) + 1, dtype=torch.double).index_put_((g[:, None], g[None]), mat, accumulate=True)
    ciou = merged.diag() / (merged.sum(0) + merged.sum(1) - merged.diag())
    same = (g[:, None] == g[None]) & (g[:, None] > 0)
    return dict(miou=100 * iou.mean().item(), colour_miou=100 * ciou.mean().item(),
                texture_acc=100 * (mat.diag().sum() - mat[0, 0]).item() / mat[same].sum().item(),
                iou=[round(100 * v, 1) for v in iou.tolist()])


def tiles(root: Path, split: str, n: int = 200, size: int = 64):
    "Normalised 64-px tiles (the training crop) of the first `n` unlabeled images and their masks"
    x, y = load_split(root, f'splits/{split}/unlabeled.txt')
    x = normalize_batch({'img': torch.from_numpy(x[:n]).permute(0, 3, 1, 2)}, 'cpu')['img']
    y = torch.from_numpy(y[:n]).long()
    H = x.shape[-1]
    cut = lambda t: torch.cat([t[..., i:i + size, j:j + size] for i in range(0, H, size) for j in range(0, H, size)])
    return cut(x), cut(y)


@torch.no_grad()
def kept_pixels(labels: torch.Tensor, keep: torch.Tensor, y: torch.Tensor) -> dict:
    "Share of object pixels kept, and accuracy / texture accuracy of the kept ones (in %)"
    obj = y > 0
    k = keep & obj
    col_ok = k & (colour_of(labels) == colour_of(y))
    return dict(obj_kept=100 * k.sum().item() / obj.sum().item(),
                kept_acc=100 * (labels == y)[k].float().mean().item() if k.any() else float('nan'),
                kept_texture_acc=100 * (labels == y)[col_ok].float().mean().item() if col_ok.any() else float('nan'))


def world_label(root: Path) -> str:
    "The knobs a variant world changed (its classes.json), or 'default'"
    knobs = json.loads((root/'classes.json').read_text()).get('world', {})
    fmt = lambda v: '-'.join(map(str, v)) if isinstance(v, list) else str(v)
    return ' '.join(f'{k}={fmt(v)}' for k, v in knobs.items()) or 'default'


def run(method: str, seed: int, a, root: Path, world_all: Path, clip, text, vx, vy, val_loader) -> dict:
    data_root, split = (world_all, 'all') if method == 'oracle' else (root, a.split)
    info = dataset_info(data_root)
    tcfg = TrainCfg.preset('toy').update(method='supervised' if method == 'oracle' else method, seed=seed, iters=a.iters)
    mcfg = ModelCfg.preset('toy')
    seed_everything(seed)
    ds = semi_datasets(data_root, split, info=info, crop=mcfg.crop_size)
    lx = build_loader(ds['train_l'], tcfg.batch_size, shuffle=True, drop_last=True, num_workers=0, seed=seed)
    lu = build_loader(ds['train_u'], tcfg.batch_size, shuffle=True, drop_last=True, num_workers=0, seed=seed + 1)
    seed_everything(seed)
    model = SemiVLSegmentor(mcfg, clip, **text)
    x, y = load_split(root, f'splits/{a.split}/labeled.txt')   # the guidance is calibrated on the split's labels
    fit_guidance_bg_bias(model, normalize_batch({'img': torch.from_numpy(x).permute(0, 3, 1, 2)}, 'cpu')['img'],
                         torch.from_numpy(y).long())
    t0 = time.time()
    res = train(tcfg, model, lx, None if tcfg.method == 'supervised' else lu, None, num_classes=info.nclass,
                out_dir=Path(a.out)/f'{method}-s{seed}', resume=False, progress=not a.quiet, stop_after=a.stop_after)
    seconds = time.time() - t0
    model.eval()
    cm = ConfusionMatrix(info.nclass)
    for b in val_loader:
        cm.update(predict(model, b['img'], b['mask'].shape[-2:], tcfg.eval_mode, tcfg.eval_crop, tcfg.eval_stride).argmax(1), b['mask'])
    with torch.no_grad(): p = torch.cat([model(vx[i:i + 64]) for i in range(0, len(vx), 64)]).softmax(1)
    conf, lab = p.max(1)
    return dict(world=world_label(root), split='all' if method == 'oracle' else a.split,
                method=method, seed=seed, iterations=res['iteration'], train_seconds=round(seconds),
                **confusion_stats(cm.mat), **kept_pixels(lab, conf >= 0.95, vy))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--split', default='20')
    ap.add_argument('--iters', type=int, default=1600)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0])
    ap.add_argument('--methods', nargs='+', default=['supervised', 'oracle', 'unimatch', 'semivl'])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--data-root', default=None, help='a toy world folder (default: the cached default world), '
                    'e.g. a variant written by data_scripts/make_toyworld.py')
    ap.add_argument('--clip', default=None, help='a tiny-CLIP folder (default: the shipped one)')
    ap.add_argument('--out', default='runs/headroom')
    ap.add_argument('--quiet', action='store_true')
    ap.add_argument('--stop-after', type=int, default=None, help='stop every run at this iteration (a smoke test)')
    ap.add_argument('--render', nargs='+', metavar='JSON', help='only merge these headroom.json files into one table')
    ap.add_argument('--md', help='also write the merged table to this markdown file (with --render)')
    ap.add_argument('--plot', help='also plot val mIoU against iterations into this PNG (with --render)')
    ap.add_argument('--mark-iters', type=int, help="draw the preset's length (iterations) as a line on the plot")
    a = ap.parse_args()
    if a.render: return render(a.render, a.md, a.plot, a.mark_iters)
    torch.set_num_threads(a.threads)
    root = ensure_toyworld(a.data_root, create=a.data_root is None); out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    world_all = oracle_world(root, out, a.split)
    clip, tok = load_toy_clip(a.clip)
    text = dataset_text(str(root/'classes.json'), clip, tok)
    vx, vy = tiles(root, a.split)
    val_loader = build_loader(semi_datasets(root, a.split, info=dataset_info(root), crop=64)['val'], 50, shuffle=False,
                              drop_last=False, num_workers=0)
    # the guidance's own labels on the same tiles (calibrated as in training)
    g = SemiVLSegmentor(ModelCfg.preset('toy'), clip, **text).eval()
    x, y = load_split(root, f'splits/{a.split}/labeled.txt')
    fit_guidance_bg_bias(g, normalize_batch({'img': torch.from_numpy(x).permute(0, 3, 1, 2)}, 'cpu')['img'], torch.from_numpy(y).long())
    guide = torch.cat([g.maskclip_pseudo_label(vx[i:i + 64], conf_thresh=0.0) for i in range(0, len(vx), 64)])
    guide9 = torch.cat([g.maskclip_pseudo_label(vx[i:i + 64], conf_thresh=0.9) for i in range(0, len(vx), 64)])
    rows = [dict(world=world_label(root), split=a.split, method='guidance (MaskCLIP, >= 0.9)', **kept_pixels(torch.where(guide9 == 255, guide, guide9), guide9 != 255, vy))]
    print(json.dumps(rows[-1]), flush=True)
    for seed in a.seeds:
        for m in a.methods:
            rows.append(run(m, seed, a, root, world_all, clip, text, vx, vy, val_loader))
            print(json.dumps(rows[-1]), flush=True)
    (out/'headroom.json').write_text(json.dumps(rows, indent=1))
    cmd = (f"python benchmarks/toy_headroom.py --split {a.split} --iters {a.iters} --seeds {' '.join(map(str, a.seeds))} "
           f"--methods {' '.join(a.methods)}" + (f' --data-root {a.data_root}' if a.data_root else '') + (f' --clip {a.clip}' if a.clip else ''))
    print(markdown(rows, cmd))


COLUMNS = ('world', 'split', 'method', 'seed', 'iterations', 'miou', 'colour_miou', 'texture_acc', 'obj_kept', 'kept_acc', 'kept_texture_acc')


def markdown(rows: list[dict], cmd: str) -> str:
    "The result table, guidance row first, then by method and seed"
    fmt = lambda v: f'{v:.1f}' if isinstance(v, float) else str(v)
    lines = [f'`{cmd}`', '', '| ' + ' | '.join(COLUMNS) + ' |', '|' + ' --- |' * len(COLUMNS)]
    return '\n'.join(lines + ['| ' + ' | '.join(fmt(r.get(c, '')) for c in COLUMNS) + ' |' for r in rows])


def render(paths: list[str], md: str | None, plot: str | None = None, mark: int | None = None):
    "Merge the headroom.json of several runs (e.g. one per seed, run in parallel) into one table"
    rows, seen = [], set()
    for p in paths:
        for r in json.loads(Path(p).read_text()):
            key = (r.get('world'), r.get('split'), r['method'], r.get('seed'), r.get('iterations'))
            if key not in seen: seen.add(key); rows.append(r)
    order = {m: i for i, m in enumerate(['supervised', 'unimatch', 'semivl', 'oracle'])}
    worlds = list(dict.fromkeys(r.get('world') for r in rows))   # the worlds in the order they were given
    split_key = lambda s: (s == 'all', int(s) if str(s).isdigit() else 0, str(s))
    rows.sort(key=lambda r: (worlds.index(r.get('world')), 'seed' in r, split_key(r.get('split', '')),
                             order.get(r['method'], 9), r.get('iterations', 0), r.get('seed', -1)))
    text = markdown(rows, 'python benchmarks/toy_headroom.py --render ' + ' '.join(paths))
    print(text)
    if md: Path(md).write_text(text + '\n')
    if plot: plot_schedule(rows, plot, mark)


def plot_schedule(rows: list[dict], path: str, mark: int | None = None):
    "val mIoU against training iterations, one line per world, split and method (mean over seeds, sample std as error bars)"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    lines = {}
    for r in rows:
        if 'iterations' in r: lines.setdefault((r['world'], r['split'], r['method']), {}).setdefault(r['iterations'], []).append(r['miou'])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (world, split, method), pts in lines.items():
        its = sorted(pts)
        label = ('all labels (oracle)' if method == 'oracle' else f'{method}, {split} labels') + ('' if world == 'default' else f' ({world})')
        ax.errorbar(its, [np.mean(pts[i]) for i in its], [np.std(pts[i], ddof=1) if len(pts[i]) > 1 else 0. for i in its], marker='o', capsize=3, label=label)
    if mark: ax.axvline(mark, ls='--', c='grey', lw=1, label=f'the toy preset ({mark} iterations)')
    ax.set_xlabel('training iterations (batch 4)'); ax.set_ylabel('val mIoU'); ax.grid(alpha=.3); ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path, dpi=120)
    print('wrote', path)

if __name__ == '__main__':
    main()
