"""Shared set-up of the performance benchmarks: the golden ViT-B/16 SemiVL model (random weights from
`tests/golden/recipe.py`), the golden crop-128 train-step inputs, peak-memory sampling and subprocess plumbing."""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / 'tests' / 'golden'
OFFICIAL_ANCHOR = "official SemiVL step (mmseg code, fp32, this machine kind): 5.6 s/iter, 3.3 GB peak RSS"


def golden(stem):
    return np.load(GOLDEN / f'{stem}.npz')


def recipe():
    spec = importlib.util.spec_from_file_location('golden_recipe', GOLDEN / 'recipe.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def build_model(crop=128, **model_kw):
    "The golden train-step model: VOC exp-40 segmentor, random CLIP ViT-B/16 tower, golden head weights (x100 logits)"
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from semivl.segmentor import ModelCfg, SemiVLSegmentor
    g = golden('train_step_exp40_crop128')
    f32 = lambda a: torch.from_numpy(np.asarray(a).astype(np.float32))
    torch.manual_seed(0)
    vis = _build_vision_tower(512, CLIPVisionCfg(layers=12, width=768, patch_size=16, image_size=224))
    vis.load_state_dict({k.removeprefix('visual.'): torch.from_numpy(v)
                         for k, v in recipe().openai_visual_state_dict().items()})
    c2c = torch.from_numpy(golden('vlg_head_concept')['concept_to_class'])
    cfg = ModelCfg.preset('voc').update(crop_size=crop, **model_kw)
    model = SemiVLSegmentor(cfg, types.SimpleNamespace(visual=vis), f32(g['text_single']), f32(g['text_concept4']), c2c)
    head = {k: f32(v) for k, v in golden('vlg_head_params').items()}
    s = float(g['head_logit_scale'][0])
    head['head.weight'] *= s; head['head.bias'] *= s
    model.decode_head.load_state_dict(head)
    return model


def _tile(x, n):
    "First `n` rows of `x` repeated along dim 0"
    return x.repeat(-(-n // x.shape[0]), *[1] * (x.dim() - 1))[:n]


def step_inputs(batch=2, crop=128):
    "Golden crop-128 step inputs (labeled, unlabeled, partner, FP keep masks), tiled to `batch`, resized to `crop`"
    import torch.nn.functional as F
    g = golden('train_step_exp40_crop128')
    def img(k):
        x = _tile(torch.from_numpy(g[k].astype(np.float32)), batch)
        return x if crop == 128 else F.interpolate(x, size=(crop, crop), mode='bilinear', align_corners=False)
    def lab(k):
        x = _tile(torch.from_numpy(g[k].astype(np.int64)), batch)
        return x if crop == 128 else F.interpolate(x[:, None].float(), size=(crop, crop), mode='nearest')[:, 0].long()
    bx = (img('img_x'), lab('mask_x'))
    bu = (img('img_w'), img('img_s1'), img('img_s2'), lab('ignore_mask'), lab('mix1'), lab('mix2'))
    bo = (img('img_w_other'), img('img_s1_other'), img('img_s2_other'), lab('ignore_mask_other'))
    masks = [_tile(torch.from_numpy(g[f'fp_keep_mask{i}']).float(), 2 * batch) for i in range(3)]
    return bx, bu, bo, masks


def param_bytes(model):
    "Bytes of the model's distinct parameters and buffers (shared tensors counted once)"
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    return sum(seen.values())


def rss():
    "Resident set size of this process in bytes"
    import psutil
    return psutil.Process().memory_info().rss


def reset_peak_rss():
    "Reset the kernel's RSS high-water mark of this process (VmHWM, Linux >= 4.0); returns the RSS now"
    Path('/proc/self/clear_refs').write_text('5')
    return rss()


def peak_rss():
    "Highest RSS of this process in bytes since start or the last `reset_peak_rss` (exact: kept by the kernel, no sampling)"
    import re
    return int(re.search(r'VmHWM:\s+(\d+) kB', Path('/proc/self/status').read_text()).group(1)) * 1024


def run_variant_subprocess(script, variant, extra=(), timeout=1800, env=None):
    "Run `script --one VARIANT` in a fresh interpreter (RSS high-water marks are per process); return its JSON line"
    env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    p = subprocess.run([sys.executable, str(script), '--one', variant, *extra], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(ROOT))
    lines = [l for l in p.stdout.splitlines() if l.startswith('{')]
    if p.returncode != 0 or not lines:
        return dict(variant=variant, error=(p.stderr or p.stdout).strip().splitlines()[-1:] or ['failed'])
    return json.loads(lines[-1])


def run_rounds(script, names, rounds, extra=()):
    """Run every variant once per round, interleaved so machine load hits all alike; collect timings and round-0 outputs.
    The children share a fresh inductor cache: round 0 compiles cold, later rounds hit the FX-graph/AOT caches"""
    results = {n: dict(variant=n, times=[], cpu=[], peaks=[], firsts=[]) for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        env = {'TORCHINDUCTOR_CACHE_DIR': f'{tmp}/inductor'}
        for r in range(rounds):
            for n in names:
                out = f'{tmp}/{n}_{r}.pt'
                res = run_variant_subprocess(script, n, ['--out', out, *extra], env=env)
                R = results[n]
                if 'error' in res or 'skipped' in res:
                    R.update(res); print(f'round {r} {n}: {res}', file=sys.stderr, flush=True); continue
                R['times'] += res['times']; R['cpu'] += res['cpu']; R['firsts'].append(res['first']); R['peaks'].append(res['peak_bytes'])
                if r == 0: R['out'] = torch.load(out)
                print(f"round {r} {n}: first {res['first']:.1f} s, wall {[round(t, 2) for t in res['times']]} s, "
                      f"cpu {[round(t, 2) for t in res['cpu']]} s",
                      file=sys.stderr, flush=True)
    return results


def firsts(R):
    "First-iteration seconds of each round, '/'-joined (round 0: cold inductor cache)"
    return '/'.join(f'{f:.1f}' for f in R['firsts'])


def median(ts):
    "Median (upper middle) of a list of timings"
    return sorted(ts)[len(ts) // 2]


def timing_row(name, results, unit):
    """Table row of one variant's median wall/CPU seconds, its fastest (least disturbed) sample and speed-ups vs
    'faithful'; `None` times if it did not run"""
    R = results[name]
    if 'skipped' in R or 'error' in R: return {'variant': name, unit: 'skipped' if 'skipped' in R else 'error'}, None
    t, c = median(R['times']), median(R['cpu'])
    row = {'variant': name, unit: f'{t:.2f}', f'CPU {unit}': f'{c:.2f}', f'best {unit}': f'{min(R["times"]):.2f}',
           'peak MB': f'{max(R["peaks"]) / 2**20:.0f}'}
    base = results.get('faithful')
    if base and base['times']:
        row['speed-up'] = f"{median(base['times']) / t:.2f}x"
        row['CPU speed-up'] = f"{median(base['cpu']) / c:.2f}x"
    return row, t


def fmt_table(rows, cols):
    "Plain-text table of dicts"
    w = {c: max(len(c), *(len(str(r.get(c, ''))) for r in rows)) for c in cols}
    out = ['  '.join(c.ljust(w[c]) for c in cols), '  '.join('-' * w[c] for c in cols)]
    out += ['  '.join(str(r.get(c, '')).ljust(w[c]) for c in cols) for r in rows]
    return '\n'.join(out)
