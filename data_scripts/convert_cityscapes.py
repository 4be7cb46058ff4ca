"""Convert Cityscapes `*_gtFine_labelIds.png` masks into the 19-class `*_gtFine_labelTrainIds.png` files that
the official split lists point at (what cityscapesScripts' createTrainIdLabelImgs.py writes).

    python data_scripts/convert_cityscapes.py --root ~/data/cityscapes
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from semivl.data import CITYSCAPES_ID_TO_TRAINID


def convert_file(src: Path, overwrite: bool = False) -> Path:
    "Write the train-id mask next to one `_labelIds.png` file; returns its path"
    dst = src.with_name(src.name.replace('_labelIds.png', '_labelTrainIds.png'))
    if dst.exists() and not overwrite: return dst
    ids = np.array(Image.open(src))
    if ids.ndim != 2: raise SystemExit(f"{src}: expected a single-channel label-id image, got shape {ids.shape}")
    Image.fromarray(CITYSCAPES_ID_TO_TRAINID[ids]).save(dst)
    return dst


def main(args):
    root = Path(args.root).expanduser()
    files = sorted((root/'gtFine').rglob('*_gtFine_labelIds.png'))
    if not files: raise SystemExit(f"no gtFine/**/*_gtFine_labelIds.png under {root}: is this the Cityscapes root "
                                   f"(with leftImg8bit/ and gtFine/ from gtFine_trainvaltest.zip)?")
    for f in tqdm(files, desc='labelIds -> trainIds', disable=args.quiet): convert_file(f, args.overwrite)
    print(f"wrote train-id masks for {len(files)} label files under {root/'gtFine'}")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='Cityscapes labelIds -> labelTrainIds (19 classes, 255 ignore)', add_help=add_help)
    p.add_argument('--root', default='~/data/cityscapes', help='Cityscapes root holding gtFine/')
    p.add_argument('--overwrite', action='store_true', help='rewrite existing *_labelTrainIds.png files')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
