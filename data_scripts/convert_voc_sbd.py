"""Build the augmented PASCAL VOC training masks (train_aug, 10,582 images) the official split lists use: the SBD
annotations (`benchmark_RELEASE/dataset/cls/*.mat`) are written as VOC-palette PNGs into
`VOC2012/SegmentationClass/` next to the original VOC masks, which are kept (they have the 255 object borders).
Reading .mat files needs scipy (`pip install scipy`).

    python data_scripts/convert_voc_sbd.py --sbd ~/data/benchmark_RELEASE --root ~/data/voc
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from semivl.core import color_palette
from semivl.data import write_split


def _loadmat():
    try:
        from scipy.io import loadmat
        return loadmat
    except ImportError:
        raise SystemExit("reading SBD .mat files needs scipy: pip install scipy") from None


def sbd_mask(mat_path: Path, loadmat) -> np.ndarray:
    "The class map (uint8, 0..20) stored in one SBD `cls/*.mat` file"
    return np.asarray(loadmat(str(mat_path))['GTcls'][0]['Segmentation'][0]).astype(np.uint8)


def save_voc_png(m: np.ndarray, path: Path):
    "Save a class map as a VOC-style palette PNG"
    im = Image.frombytes('P', (m.shape[1], m.shape[0]), np.ascontiguousarray(m, np.uint8).tobytes())
    im.putpalette(color_palette(256).flatten().tolist()); im.save(path)


def _ids(path: Path) -> list:
    return path.read_text().split() if path.exists() else []


def main(args, loadmat=None):
    sbd, root = Path(args.sbd).expanduser(), Path(args.root).expanduser()
    cls_dir = sbd/'dataset'/'cls' if (sbd/'dataset'/'cls').is_dir() else sbd/'cls'
    mats = sorted(cls_dir.glob('*.mat'))
    if not mats: raise SystemExit(f"no SBD cls/*.mat files under {sbd} (expected benchmark_RELEASE/dataset/cls/)")
    loadmat = loadmat or _loadmat()
    out = root/'SegmentationClass'; out.mkdir(parents=True, exist_ok=True)
    written = 0
    for f in tqdm(mats, desc='SBD -> png', disable=args.quiet):
        dst = out/f'{f.stem}.png'
        if dst.exists() and not args.overwrite: continue      # keep the original VOC masks
        save_voc_png(sbd_mask(f, loadmat), dst); written += 1
    print(f"wrote {written} SBD masks into {out}")
    voc_sets = root/'ImageSets'/'Segmentation'
    val = set(_ids(voc_sets/'val.txt'))
    if val:   # train_aug = (SBD train + SBD val + VOC train) - VOC val
        aug = sorted((set(_ids(sbd/'dataset'/'train.txt')) | set(_ids(sbd/'dataset'/'val.txt')) | set(_ids(voc_sets/'train.txt'))) - val)
        write_split(root/'splits'/'train_aug.txt', [(f'JPEGImages/{i}.jpg', f'SegmentationClass/{i}.png') for i in aug])
        print(f"{root/'splits'/'train_aug.txt'}: {len(aug)} images")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='PASCAL VOC + SBD -> augmented SegmentationClass masks', add_help=add_help)
    p.add_argument('--sbd', required=True, help='SBD folder (benchmark_RELEASE, containing dataset/cls/*.mat)')
    p.add_argument('--root', default='~/data/voc', help='VOC2012 folder with JPEGImages/ and SegmentationClass/')
    p.add_argument('--overwrite', action='store_true', help='also replace existing (original VOC) masks')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
