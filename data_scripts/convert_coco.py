"""Convert COCO 2017 instance annotations into the 81-class semantic masks the official split lists point at
(`masks/<image id>.png`: 0 = background, 1..80 = the 80 categories in ascending category-id order, 255 = ignore).

Painting rule (UniMatch ships pre-made masks and does not document theirs; this is our choice): crowd regions
are set to 255 first, then every non-crowd instance is painted in annotation order (later instances win).
Polygons and RLEs are rasterised with pycocotools when it is installed; without it, polygons are drawn with PIL
(edge pixels may differ slightly) and uncompressed RLEs decoded with numpy; compressed RLEs then need pycocotools.

    python data_scripts/convert_coco.py --root ~/data/coco        # reads annotations/instances_{train,val}2017.json
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

import semivl  # noqa: F401  (the kit must be installed: `pip install -e .`)
from semivl.data import write_split


def _pycocotools_mask():
    try:
        from pycocotools import mask as mask_utils
        return mask_utils
    except ImportError: return None


def rle_decode(counts: list, h: int, w: int) -> np.ndarray:
    "Uncompressed COCO RLE (column-major runs, starting with zeros) -> (h, w) uint8"
    flat = np.zeros(h*w, np.uint8)
    pos, val = 0, 0
    for c in counts:
        flat[pos:pos + c] = val; pos += c; val = 1 - val
    return flat.reshape(w, h).T


def ann_to_mask(seg, h: int, w: int, mask_utils=None) -> np.ndarray:
    "One annotation's `segmentation` (polygons or RLE) -> (h, w) uint8 {0, 1}"
    if mask_utils is not None:
        if isinstance(seg, list): rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg['counts'], list): rle = mask_utils.frPyObjects(seg, h, w)
        else: rle = seg
        return mask_utils.decode(rle).astype(np.uint8)
    if isinstance(seg, list):
        im = Image.new('L', (w, h), 0); draw = ImageDraw.Draw(im)
        for poly in seg:
            if len(poly) >= 6: draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
        return np.array(im)
    if isinstance(seg['counts'], list): return rle_decode(seg['counts'], *seg['size'])
    raise SystemExit("this annotation file has compressed RLE masks: install pycocotools (pip install pycocotools)")


def semantic_masks(ann_file: Path):
    "Yield (file_name, (h, w) uint8 semantic mask) for every image of a COCO instances file"
    d = json.loads(Path(ann_file).read_text())
    cat_index = {c['id']: i + 1 for i, c in enumerate(sorted(d['categories'], key=lambda c: c['id']))}
    if len(cat_index) != 80: print(f"note: {ann_file} has {len(cat_index)} categories (COCO has 80)")
    anns = {}
    for a in d['annotations']: anns.setdefault(a['image_id'], []).append(a)
    mu = _pycocotools_mask()
    for img in d['images']:
        h, w = img['height'], img['width']
        m = np.zeros((h, w), np.uint8)
        items = anns.get(img['id'], [])
        for a in items:
            if a.get('iscrowd'): m[ann_to_mask(a['segmentation'], h, w, mu) > 0] = 255
        for a in items:
            if not a.get('iscrowd'): m[ann_to_mask(a['segmentation'], h, w, mu) > 0] = cat_index[a['category_id']]
        yield img['file_name'], m


def main(args):
    root = Path(args.root).expanduser()
    out = root/'masks'; out.mkdir(parents=True, exist_ok=True)
    if _pycocotools_mask() is None:
        print("pycocotools is not installed: rasterising polygons with PIL (pip install pycocotools for the reference rasteriser)")
    for split in args.splits:
        ann = root/'annotations'/f'instances_{split}2017.json'
        if not ann.exists(): raise SystemExit(f"annotation file not found: {ann} (unzip annotations_trainval2017.zip into {root})")
        pairs = []
        for fname, m in tqdm(semantic_masks(ann), desc=f'{split}2017 masks', disable=args.quiet):
            stem = Path(fname).stem
            Image.fromarray(m).save(out/f'{stem}.png')
            pairs.append((f'{split}2017/{fname}', f'masks/{stem}.png'))
        lst = root/'splits'/f'{split}.txt'
        if args.write_lists and not lst.exists(): write_split(lst, pairs)
        print(f"{split}2017: {len(pairs)} masks in {out}" + (f", list {lst}" if args.write_lists else ''))


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='COCO 2017 instance annotations -> 81-class semantic masks', add_help=add_help)
    p.add_argument('--root', default='~/data/coco', help='COCO root with train2017/, val2017/ and annotations/')
    p.add_argument('--splits', nargs='+', default=['train', 'val'], choices=['train', 'val'])
    p.add_argument('--write-lists', action='store_true', help='also write splits/train.txt and splits/val.txt (if missing)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
