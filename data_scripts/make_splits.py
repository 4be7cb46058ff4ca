"""Make new seeded, class-balanced labeled/unlabeled splits of any size for any dataset, in the official format
(`<root>/splits/<name>/labeled.txt` and `unlabeled.txt`). Sizes are counts (`92`) or fractions of the training
set (`1_16` = round(n/16), as the official ADE20K splits were made).

    python data_scripts/make_splits.py --root ~/data/voc --sizes 50 100 --seed 1
    python data_scripts/make_splits.py --root ~/.cache/semivl/toyworld/v3 --sizes 20 --seed 1 --name-format '{size}_s{seed}'
    python data_scripts/make_splits.py --root ~/my_data --sizes 1_8 1_4 --pool ~/my_data/train.txt
"""
import argparse

from semivl.data import DataError, dataset_info, read_split
from semivl.prepare import make_split, training_pool


def parse_size(s: str, n_pool: int) -> int:
    "'92' -> 92; '1_16' -> round(n_pool/16)"
    if '_' in s:
        num, den = s.split('_', 1)
        return round(n_pool*int(num)/int(den))
    return int(s)


def main(args):
    pool = read_split(args.pool, need_mask=True) if args.pool else training_pool(args.root)
    info = dataset_info(args.dataset or args.root)
    for s in args.sizes:
        n = parse_size(s, len(pool))
        if n < 1: raise DataError(f"split {s!r} gives {n} labeled images from a pool of {len(pool)}")
        name = args.name_format.format(size=s, n=n, seed=args.seed)
        out = make_split(args.root, n, name=name, pool=pool, seed=args.seed, info=info, progress=not args.quiet,
                         overwrite=args.overwrite)
        print(f"{out}: {n} labeled, {len(pool) - n} unlabeled")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='Make seeded, class-balanced semi-supervised splits', add_help=add_help)
    p.add_argument('--root', required=True, help='dataset folder')
    p.add_argument('--sizes', nargs='+', required=True, help="labeled counts ('92') or fractions ('1_16')")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--pool', default=None, help='split file listing the candidate training pairs '
                                               '(default: union of all labeled/unlabeled lists under root/splits)')
    p.add_argument('--dataset', default=None, help='preset name if the folder has no classes.json')
    p.add_argument('--name-format', default='{size}', help="split folder name; fields {size}, {n}, {seed} (e.g. '{size}_s{seed}')")
    p.add_argument('--overwrite', action='store_true', help='replace splits that already exist under that name')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
