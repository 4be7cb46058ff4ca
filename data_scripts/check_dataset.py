"""Check a dataset folder: read every image and mask its split files list, print counts, image sizes, the class
histogram and every problem found (missing/corrupt files, size mismatches, labels out of range, bad split files).
Exits with status 1 when there are problems.

    python data_scripts/check_dataset.py --root ~/data/voc
    python data_scripts/check_dataset.py --root ~/my_data --max-files 200    # quick look
"""
import argparse
import sys

from semivl.prepare import check_dataset


def main(args):
    rep = check_dataset(args.root, info=args.dataset, split_files=args.split_files, max_files=args.max_files,
                        progress=not args.quiet)
    print(rep)
    return 0 if rep.ok else 1


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='Check a semivl dataset folder and print a summary', add_help=add_help)
    p.add_argument('--root', required=True, help='dataset folder (with splits/ and classes.json or an official layout)')
    p.add_argument('--dataset', default=None, help='preset name (pascal, coco, ade, cityscapes, toyworld) if the folder does not say')
    p.add_argument('--split-files', nargs='*', default=None, help='check only these split files (default: all under root/splits)')
    p.add_argument('--max-files', type=int, default=None, help='check only the first N distinct image/mask pairs')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
