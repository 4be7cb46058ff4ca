"""Speed and memory of one SemiVL training iteration (`semivl.train.train_step` + backward + AdamW step), per variant.

Same inputs for every variant: the golden crop-128 step (`tests/golden/train_step_exp40_crop128.npz`), ViT-B/16 with
the random weights of `tests/golden/recipe.py`, batch 2, `torch.set_num_threads(2)`. Each variant runs in a fresh
interpreter (RSS high-water marks are per process); variants are interleaved over `--rounds` rounds so that load
changes on a shared machine hit all of them alike. Prints s/iteration (median of the timed iterations of all
rounds), images/s, the first iteration of each round (warm-up, includes compilation: the rounds share a fresh
inductor cache, so round 0 compiles cold and round 1 reuses the cached graphs), peak memory (CPU: the kernel's RSS
high-water mark over all iterations above the RSS of the built model, so gradients and AdamW states count and, for
`kit+compile`, the compiler's own memory too; CUDA: max_memory_allocated) and the max |difference| of the losses and
predictions of the first iteration against the faithful variant.

    python benchmarks/train_step.py                        # all variants, 2 rounds of 2 timed iterations
    python benchmarks/train_step.py --variants faithful kit --rounds 1
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from common import (OFFICIAL_ANCHOR, build_model, firsts, fmt_table, golden, peak_rss, reset_peak_rss, run_rounds,
                    run_variant_subprocess, step_inputs, timing_row)

LOSSES = ['loss', 'loss_x', 'loss_s1', 'loss_s2', 'loss_fp', 'loss_guidance_s1', 'loss_guidance_s2', 'loss_guidance_fp']
PREDS = ['pred_w_other', 'pred_x', 'pred_w', 'pred_w_fp', 'pred_s1', 'pred_s2']

# name: (what it is, ModelCfg overrides, options)
VARIANTS = {
    'faithful': ("official computation: open_clip blocks + separate value-path passes, the unused last block, "
                 "naive (math) attention, full 3x3 ASPP taps, skip features repeated per class and concatenated, "
                 "FP branch decoded for the labeled images too (their logits are dropped); fp32 eager", {},
                 dict(faithful=True, math_attn=True)),
    'faithful+sdpa': ("faithful, attention through scaled_dot_product_attention's fused CPU/CUDA kernel", {},
                      dict(faithful=True)),
    'kit': ("kit defaults: fused blocks (one ln_1 + qkv for block and value path), last block's attention "
            "skipped, SDPA, padding-only ASPP taps skipped, skip conv once per image, FP branch decoded for the "
            "unlabeled images only (`train_step` passes `fp_rows`)", {}, {}),
    'kit+ckpt': ("kit + activation checkpointing of the backbone blocks", dict(grad_checkpointing=True), {}),
    'kit+channels_last': ("kit + channels_last decoder (weights and conv inputs)", {}, dict(channels_last=True)),
    'kit+compile': ("kit + torch.compile of backbone, MaskCLIP twin and decoder (inductor)", {}, dict(compile=True)),
    'kit+bf16': ("kit + bf16 autocast (CUDA, or a CPU with AVX512-BF16/AMX)", {}, dict(bf16=True)),
}
DEFAULT_VARIANTS = ['faithful', 'faithful+sdpa', 'kit', 'kit+ckpt', 'kit+channels_last',
                    'kit+bf16', 'kit+compile']


def _up_concat_forward(self, x, skip):
    "The official `Up`: the skip map is repeated for every class map and concatenated before the first conv"
    import torch.nn.functional as F
    x = self.up(x)
    skip = F.interpolate(skip, size=x.shape[-2:], mode='bilinear', align_corners=True)
    return self.conv(torch.cat([x, skip.repeat_interleave(x.shape[0] // skip.shape[0], dim=0)], 1))


def apply_variant(model, opts):
    "Switch `model` to a variant in place; returns a context-manager factory wrapping each iteration"
    import contextlib
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from semivl.decoder import DilatedConv2d, Up
    if opts.get('faithful'):
        model.backbone.fused = model.clip_encoder.fused = False
        DilatedConv2d.forward = torch.nn.Conv2d.forward          # all 9 taps, as the official ASPP
        Up.forward = _up_concat_forward                          # skip repeated per class and concatenated
        fwd = model.forward_fp
        def forward_fp(img, fp_keep_masks=None, p=0.5, fp_rows=None):
            "The official step perturbs and decodes every row, then uses the last `fp_rows` (unlabeled) ones"
            clean, pert = fwd(img, fp_keep_masks, p)
            return clean, pert if fp_rows is None else pert[pert.shape[0] - fp_rows:]
        model.forward_fp = forward_fp
    if opts.get('channels_last'):
        model.decode_head.to(memory_format=torch.channels_last)
        conv_fwd = torch.nn.Conv2d._conv_forward
        def cl_forward(self, x, w, b): return conv_fwd(self, x.contiguous(memory_format=torch.channels_last), w, b)
        for m in model.decode_head.modules():
            if isinstance(m, torch.nn.Conv2d): m._conv_forward = cl_forward.__get__(m)
    if opts.get('compile'):
        for m in (model.backbone, model.clip_encoder, model.decode_head): m.compile()
    ctx = []
    if opts.get('math_attn'): ctx.append(lambda: sdpa_kernel([SDPBackend.MATH]))
    if opts.get('bf16'): ctx.append(lambda: torch.autocast(model.text.device.type, dtype=torch.bfloat16))
    def wrap():
        stack = contextlib.ExitStack()
        for c in ctx: stack.enter_context(c())
        return stack
    return wrap


def cpu_has_bf16():
    "Whether this CPU has native bf16 dot products (AVX512-BF16 or AMX): the kit's own test"
    from semivl.core import native_bf16
    return native_bf16('cpu')[0]


def run_one(name, args):
    "Run one variant in this process; print one JSON line"
    from semivl.train import train_step
    from semivl.optim import build_optimizer
    from semivl.train_config import TrainCfg
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    desc, model_kw, opts = VARIANTS[name]
    if opts.get('bf16') and dev.type == 'cpu' and not cpu_has_bf16():
        print(json.dumps(dict(variant=name, skipped='this CPU has no bf16 matmul units (no AVX512-BF16/AMX): bf16 '
                              'matmuls run far slower than fp32, and the kit refuses amp_bf16 here')))
        return
    model = build_model(args.crop, **model_kw).to(dev)
    wrap = apply_variant(model, opts)
    bx, bu, bo, masks = step_inputs(args.batch)
    cfg = TrainCfg.preset('voc').update(total_iters=1000, batch_size=args.batch)
    opt, _ = build_optimizer(model, cfg)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)

    def iteration(keep=False):
        with wrap():
            out = train_step(model, bx, bu, bo, 0, cfg, fp_keep_masks=masks, return_outputs=keep)
            opt.zero_grad(set_to_none=True)
            out['loss'].backward()
        opt.step()
        sync()
        return out

    import gc; gc.collect()
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    base = reset_peak_rss()                    # CPU peak: kernel high-water mark above the built model, whole run
    times, cpu = [], []
    t0 = time.perf_counter(); out = iteration(keep=True); first = time.perf_counter() - t0
    keep = {k: out[k].detach().float().cpu() for k in LOSSES + PREDS}
    del out
    for _ in range(args.iters):
        t0, c0 = time.perf_counter(), time.process_time(); iteration()
        times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    if args.out != '/dev/null': torch.save(keep, args.out)
    peak = torch.cuda.max_memory_allocated() if dev.type == 'cuda' else peak_rss() - base
    print(json.dumps(dict(variant=name, times=times, cpu=cpu, first=first, peak_bytes=peak, out=args.out)))


def diffs(a, b):
    "max |a - b| over losses and over predictions"
    dl = max(abs(a[k] - b[k]).max().item() for k in LOSSES)
    dp = max(abs(a[k] - b[k]).max().item() for k in PREDS)
    return dl, dp


def vs_golden(o):
    "max |o - golden| on the golden's stride-2 predictions, and the largest relative loss error"
    g = golden('train_step_exp40_crop128')
    dp = max(abs(o[k][:, :, ::2, ::2] - torch.from_numpy(g[f'{k}_stride2'])).max().item() for k in PREDS)
    dl = max(abs(o[k].item() - g[k][0]) / abs(g[k][0]) for k in LOSSES)
    return dl, dp


def bf16_demo():
    "Time one ViT-B MLP matmul (260x768 @ 768x3072) in fp32 and bf16 on this CPU"
    a, b = torch.randn(260, 768), torch.randn(768, 3072)
    res = {}
    for dt in (torch.float32, torch.bfloat16):
        x, y = a.to(dt), b.to(dt)
        x @ y
        t0 = time.perf_counter(); n = 0
        while time.perf_counter() - t0 < 1.0: x @ y; n += 1
        res[str(dt)] = (time.perf_counter() - t0) / n
    return res


def main(args):
    names = args.variants
    results = run_rounds(__file__, names, args.rounds, ['--iters', str(args.iters), '--crop', str(args.crop), '--batch',
                                                     str(args.batch), '--device', args.device, '--threads', str(args.threads)])
    ref = results.get('faithful', {}).get('out')
    rows = []
    for n in names:
        row, t = timing_row(n, results, 's/iter')
        if t is not None:
            R = results[n]
            row.update({'images/s': f'{3 * args.batch / t:.2f}', 'first iter s': firsts(R)})
            if ref is not None:
                dl, dp = diffs(R['out'], ref)
                row.update({'max|Δloss|': f'{dl:.1e}', 'max|Δpred|': f'{dp:.1e}'})
            if args.crop == 128 and args.batch == 2:
                gl, gp = vs_golden(R['out'])
                row.update({'golden loss rel': f'{gl:.1e}', 'golden pred abs': f'{gp:.1e}'})
        rows.append(row)
    print(f"\nSemiVL training iteration: ViT-B/16 (random recipe weights), crop {args.crop}, batch {args.batch}, "
          f"{args.threads} threads, device {args.device}; {args.rounds} interleaved rounds x {args.iters} timed "
          f"iterations per variant (median); images/s counts labeled + unlabeled + mix-partner samples (3 x batch); "
          f"CPU s = user+sys seconds of the process (less load-dependent than wall-clock, but an OpenMP thread that waits for a descheduled partner spins, so it grows under oversubscription too); best = fastest single timed sample (least disturbed by other jobs)")
    print(f"anchor: {OFFICIAL_ANCHOR}\n")
    print(fmt_table(rows, ['variant', 's/iter', 'speed-up', 'CPU s/iter', 'CPU speed-up', 'best s/iter', 'images/s', 'first iter s', 'peak MB', 'max|Δloss|',
                           'max|Δpred|', 'golden loss rel', 'golden pred abs']))
    print('\nGolden tolerances: losses rtol 1e-3, predictions atol 5e-3.')
    for n in names:
        if 'skipped' in results[n]: print(f'{n}: skipped - {results[n]["skipped"]}')
        if 'error' in results[n]: print(f'{n}: error - {results[n]["error"]}')
    print('\nVariants:')
    for n in names: print(f'  {n}: {VARIANTS[n][0]}')
    if args.device == 'cpu' and 'kit+bf16' in names:
        d = bf16_demo()
        print(f"\nbf16 on this CPU: one 260x768 @ 768x3072 matmul takes {d['torch.float32']*1e3:.1f} ms in fp32, "
              f"{d['torch.bfloat16']*1e3:.1f} ms in bf16 (bf16/fp32 time ratio {d['torch.bfloat16'] / d['torch.float32']:.2f}; "
              f"native bf16 on this CPU: {cpu_has_bf16()})")


SWEEP = {'kit': [(128, 1), (128, 2), (192, 1), (128, 4)], 'kit+ckpt': [(128, 2), (192, 1)]}


def memory_sweep(args):
    "Peak memory of one iteration vs (crop, batch) for the kit and kit+ckpt variants; linear fit in batch*crop^2"
    import numpy as np
    from common import param_bytes
    rows, fits = [], {}
    for name in ('kit', 'kit+ckpt'):
        pts = []
        for crop, batch in SWEEP[name]:
            res = run_variant_subprocess(__file__, name, ['--out', '/dev/null', '--iters', '0', '--crop', str(crop),
                                                          '--batch', str(batch), '--device', args.device,
                                                          '--threads', str(args.threads)])
            if 'peak_bytes' not in res: print(name, crop, batch, res, file=sys.stderr); continue
            pts.append((batch * crop ** 2, res['peak_bytes']))
            rows.append({'variant': name, 'crop': crop, 'batch': batch, 'peak MB (measured)': f"{res['peak_bytes'] / 2**20:.0f}",
                         'iteration s': f"{res['first']:.1f}"})
            print(rows[-1], file=sys.stderr, flush=True)
        x, y = np.array(pts, dtype=float).T
        fits[name] = np.polyfit(x, y, 1)                   # bytes = slope * batch*crop^2 + intercept
    print(f"\nPeak memory of one training iteration above the loaded model (CPU RSS, {args.threads} threads), "
          "measured; weights, AdamW states and gradients of the trainable parameters are included in the delta "
          "except the model weights themselves\n")
    print(fmt_table(rows, ['variant', 'crop', 'batch', 'peak MB (measured)', 'iteration s']))
    wb = param_bytes(build_model(128))
    print(f"\nmodel weights (backbone + MaskCLIP twin's own attention tensors + decoder): {wb / 2**20:.0f} MB")
    for name, (a, b) in fits.items():
        print(f"fit {name}: peak ≈ {b / 2**20:.0f} MB + {a * 512**2 / 2**20:.0f} MB x batch x (crop/512)^2")
    print("\nEXTRAPOLATED to a GPU (not measured): weights + fitted peak + 1 GB for the CUDA context, cuDNN "
          "workspaces and caching-allocator slack; ViT-B/16, semivl step, fp32")
    out = []
    for crop in (320, 512):
        for batch in (1, 2, 4, 8, 16):
            r = {'crop': crop, 'batch': batch}
            for name, (a, b) in fits.items():
                r[f'{name} GB'] = f"{(wb + b + a * batch * crop ** 2 + 2**30) / 2**30:.1f}"
            out.append(r)
    print(fmt_table(out, ['crop', 'batch', *[f'{n} GB' for n in fits]]))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--iters', type=int, default=2, help='timed iterations per variant and round (after 1 warm-up)')
    ap.add_argument('--crop', type=int, default=128)
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--memory-sweep', action='store_true', help='peak memory vs crop and batch (kit, kit+ckpt) and the GPU extrapolation')
    ap.add_argument('--one', help=argparse.SUPPRESS)
    ap.add_argument('--out', help=argparse.SUPPRESS)
    a = ap.parse_args()
    run_one(a.one, a) if a.one else memory_sweep(a) if a.memory_sweep else main(a)
