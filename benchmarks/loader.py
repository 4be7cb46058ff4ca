"""Loader throughput: images/s of `SemiDataset` through `build_loader` at crop 512 (VOC-like 500x375 JPEGs written
by `semivl.data.fake_dataset`, VOC preset), per mode. Records the machine with every number. Not run in CI.
`train_u+partner` counts unlabeled images, each giving both draws the training step needs (6 image views).

    python benchmarks/loader.py                       # train_u (+partner), train_u, train_l; 2 workers, crop 512
    python benchmarks/loader.py --workers 8 --batch 8 --modes train_u
    python benchmarks/loader.py --dataset cityscapes --size 1024 2048 --crop 801 --n-images 16
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from semivl.core import seed_everything
from semivl.data import SemiDataset, build_loader, fake_dataset


def bench(root, mode, partner, args):
    kw = dict(nsample=args.n_images) if mode == 'train_l' else {}
    ds = SemiDataset(root, mode, '1_4', crop=args.crop, partner=partner, uint8=args.uint8, **kw)
    dl = build_loader(ds, batch_size=args.batch, num_workers=args.workers, seed=0, pin_memory=False)
    it = iter(dl)
    for _ in range(args.warmup): next(it)                       # worker start-up and first decodes
    n, t0 = 0, time.perf_counter()
    for _ in range(args.batches):
        try: b = next(it)
        except StopIteration: it = iter(dl); b = next(it)
        n += next(iter(b.values())).shape[0]
    dt = time.perf_counter() - t0
    return {'mode': mode + ('+partner' if partner else ''), 'images_per_s': round(n/dt, 2), 'images': n, 'seconds': round(dt, 2)}


def main(args):
    seed_everything(0)
    with tempfile.TemporaryDirectory() as d:
        root = fake_dataset(Path(d)/args.dataset, args.dataset, n_train=args.n_images*4//3 + 1, n_val=1, size=tuple(args.size))
        machine = {'cpu': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
                   'loadavg_before': os.getloadavg()[0], 'torch': torch.__version__, 'dataset': args.dataset,
                   'image_hw': args.size, 'crop': args.crop, 'uint8': args.uint8,
                   'workers': args.workers, 'batch': args.batch}
        rows = []
        for m in args.modes:
            mode, partner = (m[:-len('+partner')], True) if m.endswith('+partner') else (m, False)
            rows.append(bench(root, mode, partner, args)); print(json.dumps(rows[-1]), flush=True)
        machine['loadavg_after'] = os.getloadavg()[0]
        print(json.dumps({'machine': machine, 'results': rows}))


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='SemiDataset/DataLoader throughput', add_help=add_help)
    p.add_argument('--modes', nargs='+', default=['train_u+partner', 'train_u', 'train_l'])
    p.add_argument('--dataset', default='pascal', help='fake layout/preset: pascal, coco, ade, cityscapes, custom')
    p.add_argument('--size', type=int, nargs=2, default=[375, 500], help='fake image height width (VOC-like by default)')
    p.add_argument('--crop', type=int, default=512)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--uint8', action='store_true', help='workers return uint8 images (normalise on the GPU)')
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--batches', type=int, default=30, help='timed batches')
    p.add_argument('--warmup', type=int, default=3, help='untimed batches first')
    p.add_argument('--n-images', type=int, default=48, help='unlabeled images in the fake dataset')
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
