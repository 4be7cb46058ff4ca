"""Download the official split lists of the SemiVL paper into `<root>/splits/` (from the public SemiVL or UniMatch
GitHub repositories, at pinned commits, see `semivl.data.SPLIT_SOURCES`). Needs internet access; offline it
prints the URLs to fetch by hand.

    python data_scripts/fetch_splits.py --dataset pascal --root ~/data/voc            # all five splits + val
    python data_scripts/fetch_splits.py --dataset cityscapes --splits 1_30 --root ~/data/cityscapes
"""
import argparse
import urllib.error
import urllib.request
from pathlib import Path

from semivl.data import ALIASES
from semivl.prepare import OFFICIAL_SPLITS, official_split_urls


def download(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r: return r.read()


def main(args):
    name = ALIASES.get(args.dataset.lower(), args.dataset.lower())
    splits = args.splits or list(OFFICIAL_SPLITS.get(name, ()))
    urls = {}
    for s in splits or [None]: urls.update(official_split_urls(name, s, args.source))
    got = {}
    for rel, url in urls.items():                      # fetch everything first: nothing is written on failure
        try: got[rel] = download(url, args.timeout)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            lines = '\n'.join(f"  {u}  ->  {Path(args.root).expanduser()/'splits'/r}" for r, u in urls.items())
            raise SystemExit(f"cannot download {url}: {getattr(e, 'reason', e)}\n"
                             f"Are you online? Fetch these files by hand (or copy them from a clone of the repository):\n{lines}")
    out = Path(args.root).expanduser()/'splits'
    for rel, data in got.items():
        (out/rel).parent.mkdir(parents=True, exist_ok=True); (out/rel).write_bytes(data)
        print(f"{out/rel}: {len(data.splitlines())} lines")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description='Fetch the official SemiVL/UniMatch split lists', add_help=add_help)
    p.add_argument('--dataset', required=True, help=f"one of {', '.join(OFFICIAL_SPLITS)} (or voc, ade20k)")
    p.add_argument('--root', required=True, help='dataset folder; files go to <root>/splits/')
    p.add_argument('--splits', nargs='*', default=None, help='split names (default: all official splits of the dataset)')
    p.add_argument('--source', default='semivl', choices=['semivl', 'unimatch'])
    p.add_argument('--timeout', type=float, default=30.)
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
