"""Pretrain the tiny CLIP on the toy world's caption corpus (seeded, resumable).

    python data_scripts/pretrain_toyclip.py --out runs/toyclip            # defaults (~40 min on one CPU thread)
    python data_scripts/pretrain_toyclip.py --out /tmp/t --steps 40 --n-scenes 500   # a smoke run
    python data_scripts/pretrain_toyclip.py --out runs/toyclip_light --illumination .25 --data-root ~/worlds/light
                                           # a variant world's CLIP, evaluated on that world (make_toyworld.py)

Re-running with the same --out resumes from its checkpoint.pt. At the end the folder holds an open_clip
`local-dir` model (open_clip_config.json + open_clip_model.safetensors), vocab.json, train_log.csv and metrics.json;
copy those files (not checkpoint.pt) to semivl/assets/toyclip/ to ship them.
"""
import argparse
import json
from pathlib import Path

from semivl.toyclip import create_toy_clip, load_toy_clip
from semivl.toyclip_pretrain import TrainToyClipCfg, dense_zero_shot_eval, pretrain_toy_clip, supervised_baseline
from semivl.toyworld import WorldCfg, ensure_toyworld


def evaluate(out, baseline_steps=300, data_root=None):
    "Add dense zero-shot mIoU (both read-outs) and the 20-label baselines to out/metrics.json"
    out = Path(out)
    metrics = json.loads((out/'metrics.json').read_text())
    model, tok = load_toy_clip(out)
    world = WorldCfg(**metrics['cfg'].get('world') or {})
    if data_root is None and world.changes():
        raise SystemExit(f"this CLIP was pretrained on a variant world {world.changes()}: give --data-root, that world's "
                         "folder (data_scripts/make_toyworld.py with the same knobs)")
    root = ensure_toyworld(data_root, create=data_root is None, world=world)   # refuses a world with other knobs
    metrics['dense_zero_shot'] = dense_zero_shot_eval(model, tok, root)
    metrics['dense_zero_shot_mlp'] = dense_zero_shot_eval(model, tok, root, mlp=True)
    metrics['dense_zero_shot_norm'] = dense_zero_shot_eval(model, tok, root, background='norm')
    print('dense zero-shot mIoU', round(metrics['dense_zero_shot']['miou'], 3),
          '(MaskCLIP +MLP read-out:', round(metrics['dense_zero_shot_mlp']['miou'], 3), ')')
    metrics['baselines'] = dict(
        frozen_toyclip=supervised_baseline(model.visual, root, frozen=True, steps=baseline_steps),
        random_init=supervised_baseline(create_toy_clip().visual, root, frozen=False, steps=baseline_steps))
    for k, v in metrics['baselines'].items(): print(k, 'mIoU', round(v['miou'], 3), f"({v['seconds']} s)")
    (out/'metrics.json').write_text(json.dumps(metrics, indent=1))
    return metrics


def main(args):
    if args.eval_only: return evaluate(args.out, args.baseline_steps, args.data_root)
    world = WorldCfg.from_args(args).changes()   # only the knobs that differ: the default run records None
    cfg = TrainToyClipCfg().update(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   weight_decay=args.weight_decay, warmup=args.warmup, n_scenes=args.n_scenes,
                                   seed=args.seed, wide_crops=args.wide_crops, scene_zoom=tuple(args.scene_zoom), text_sep=args.text_sep, eval_every=args.eval_every, ckpt_every=args.ckpt_every,
                                   n_eval_scenes=args.n_eval_scenes, threads=args.threads, max_minutes=args.max_minutes,
                                   world=world or None)
    metrics = pretrain_toy_clip(cfg, args.out, progress=not args.no_progress)
    print(json.dumps(metrics['zero_shot'], indent=1))
    if not args.skip_eval: metrics = evaluate(args.out, args.baseline_steps, args.data_root)
    return metrics


def get_args_parser(add_help=True):
    d = TrainToyClipCfg()
    p = argparse.ArgumentParser(description='Pretrain the tiny CLIP of the toy world', add_help=add_help)
    p.add_argument('--out', required=True, help='output folder (resumes from its checkpoint.pt)')
    p.add_argument('--steps', type=int, default=d.steps, help='optimiser steps (cosine schedule length)')
    p.add_argument('--batch-size', type=int, default=d.batch_size)
    p.add_argument('--lr', type=float, default=d.lr)
    p.add_argument('--weight-decay', type=float, default=d.weight_decay)
    p.add_argument('--warmup', type=int, default=d.warmup, help='linear warmup steps')
    p.add_argument('--n-scenes', type=int, default=d.n_scenes, help='caption-corpus scenes')
    p.add_argument('--seed', type=int, default=d.seed)
    p.add_argument('--text-sep', type=float, default=d.text_sep, help='weight of the class-prompt separation term')
    p.add_argument('--wide-crops', type=float, default=d.wide_crops, help='fraction of crops up to the whole scene')
    p.add_argument('--scene-zoom', type=float, nargs=2, default=d.scene_zoom, metavar=('LO', 'HI'),
                   help='scene half of each batch: windows magnified by U(LO, HI) (1 1: whole scenes; 2 2: the 128-px world scale)')
    p.add_argument('--eval-every', type=int, default=d.eval_every, help='steps between zero-shot evaluations')
    p.add_argument('--ckpt-every', type=int, default=d.ckpt_every, help='steps between resumable checkpoints')
    p.add_argument('--n-eval-scenes', type=int, default=d.n_eval_scenes, help='held-out scenes for zero-shot eval')
    p.add_argument('--threads', type=int, default=d.threads, help='torch CPU threads')
    p.add_argument('--max-minutes', type=float, default=None, help='stop (saving everything) after this wall time')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--skip-eval', action='store_true', help='skip the dense zero-shot and baseline evaluation')
    p.add_argument('--eval-only', action='store_true', help='only (re)run the evaluation of a finished --out folder')
    p.add_argument('--baseline-steps', type=int, default=300, help='training steps of the 20-label baselines')
    p.add_argument('--data-root', default=None,
                   help='the toy world the dense read-out and the baselines are measured on (default: the cached default '
                        'world; a variant CLIP needs its own world, written by make_toyworld.py with the same knobs)')
    WorldCfg.add_args(p)   # the corpus's scene statistics (defaults: the shipped CLIP's world)
    return p


if __name__ == '__main__':
    main(get_args_parser().parse_args())
