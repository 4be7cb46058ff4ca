"""Generate the toy segmentation world (images, masks, splits, classes.json) in the kit's generic layout.

    python data_scripts/make_toyworld.py                       # default cache folder, semivl.core.cache_dir('toyworld', 'v<VERSION>')
    python data_scripts/make_toyworld.py --root /tmp/tw --n-train 200 --n-val 50
    python data_scripts/make_toyworld.py --root ~/worlds/big --radius 10 20    # a variant world (knobs: semivl.toyworld.WorldCfg)

The kit calls `semivl.toyworld.ensure_toyworld()` itself on first use, so this script is only needed to
pre-generate the world or to write a variant (other seed or size) somewhere else.
"""
import argparse
import time

from semivl.toyworld import SPLIT_SIZES, WorldCfg, ensure_toyworld


def main(args):
    t = time.time()
    world = WorldCfg.from_args(args)
    if world.changes() and args.root is None:
        raise SystemExit('a variant world (--objects/--radius/--period/--texture-contrast/--illumination) needs its own --root: '
                         'the default cache folder holds the default world')
    root = ensure_toyworld(args.root, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                           split_sizes=tuple(args.split_sizes), progress=not args.no_progress, world=world)
    print(f'toy world at {root} ({time.time() - t:.1f} s)')
    return root


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='Generate the toy segmentation world', add_help=add_help)
    p.add_argument('--root', default=None, help='output folder (default: the versioned cache folder)')
    p.add_argument('--n-train', type=int, default=2000, help='training scenes (labeled + unlabeled)')
    p.add_argument('--n-val', type=int, default=300, help='validation scenes')
    p.add_argument('--seed', type=int, default=0, help='world seed')
    p.add_argument('--split-sizes', type=int, nargs='+', default=list(SPLIT_SIZES), help='numbers of labeled images')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    WorldCfg.add_args(p)
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
