"""Speed and memory of one SemiVL training iteration (`semivl.train.train_step` + backward + AdamW step), per variant.

Same inputs for every variant: the golden crop-128 step (`tests/golden/train_step_exp40_crop128.npz`), ViT-B/16 with
the random weights of `tests/golden/recipe.py`, batch 2, `torch.set_num_threads(2)`. Each variant runs in a fresh
interpreter (RSS high-water marks are per process); variants are interleaved over `--rounds` rounds so that load
changes on a shared machine hit all of them alike. Prints s/iteration (median of the timed iterations of all
rounds), images/s, the first iteration (warm-up, includes compilation), peak memory (CPU: RSS above the
after-build level, sampled every 5 ms; CUDA: max_memory_allocated) and the max |difference| of the losses and
predictions of the first iteration against the faithful variant.

    python benchmarks/train_step.py                        # all variants, 2 rounds of 2 timed iterations
    python benchmarks/train_step.py --variants faithful kit --rounds 1
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from common import (OFFICIAL_ANCHOR, PeakRSS, build_model, fmt_table, golden, run_variant_subprocess, step_inputs)

LOSSES = ['loss', 'loss_x', 'loss_s1', 'loss_s2', 'loss_fp', 'loss_mc_s1', 'loss_mc_s2', 'loss_mc_fp']
PREDS = ['pred_w_other', 'pred_x', 'pred_w', 'pred_w_fp', 'pred_s1', 'pred_s2']

# name: (what it is, ModelCfg overrides, options)
VARIANTS = {
    'faithful': ("official computation: open_clip blocks + separate value-path passes, the unused last block, "
                 "naive (math) attention, full 3x3 ASPP taps; fp32 eager", {}, dict(faithful=True, math_attn=True)),
    'faithful+sdpa': ("faithful, attention through scaled_dot_product_attention's fused CPU/CUDA kernel", {},
                      dict(faithful=True)),
    'kit': ("kit defaults: fused blocks (one ln_1 + qkv for block and value path), last block's attention "
            "skipped, SDPA, padding-only ASPP taps skipped", {}, {}),
    'kit+ckpt': ("kit + activation checkpointing of the backbone blocks", dict(grad_checkpointing=True), {}),
    'kit+channels_last': ("kit + channels_last decoder (weights and conv inputs)", {}, dict(channels_last=True)),
    'kit+compile': ("kit + torch.compile of backbone, MaskCLIP twin and decoder (inductor)", {}, dict(compile=True)),
    'kit+bf16': ("kit + bf16 autocast (CUDA only)", {}, dict(bf16=True)),
    'kit+fp_w_only': ("kit + the FP branch decoded for the unlabeled images only (`forward_fp(..., fp_rows=B)`; "
                      "the official step also decodes the never-used labeled FP logits). Needs a one-line "
                      "train_step change, emulated here", {}, dict(fp_w_only=True)),
}
DEFAULT_VARIANTS = ['faithful', 'faithful+sdpa', 'kit', 'kit+fp_w_only', 'kit+ckpt', 'kit+channels_last',
                    'kit+compile', 'kit+bf16']


def apply_variant(model, opts):
    "Switch `model` to a variant in place; returns a context-manager factory wrapping each iteration"
    import contextlib
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from semivl.decoder import DilatedConv2d
    if opts.get('faithful'):
        model.backbone.fused = model.clip_encoder.fused = False
        DilatedConv2d.forward = torch.nn.Conv2d.forward          # all 9 taps, as the official ASPP
    if opts.get('channels_last'):
        model.decode_head.to(memory_format=torch.channels_last)
        conv_fwd = torch.nn.Conv2d._conv_forward
        def cl_forward(self, x, w, b): return conv_fwd(self, x.contiguous(memory_format=torch.channels_last), w, b)
        for m in model.decode_head.modules():
            if isinstance(m, torch.nn.Conv2d): m._conv_forward = cl_forward.__get__(m)
    if opts.get('fp_w_only'):
        fwd = model.forward_fp
        def forward_fp(img, fp_keep_masks=None, p=0.5):
            clean, pert = fwd(img, fp_keep_masks, p, fp_rows=img.shape[0] // 2)
            return clean, torch.cat([torch.zeros_like(pert), pert])    # train_step uses only the second half
        model.forward_fp = forward_fp
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


def run_one(name, args):
    "Run one variant in this process; print one JSON line"
    from semivl.train import TrainCfg, build_optimizer, train_step
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    desc, model_kw, opts = VARIANTS[name]
    if opts.get('bf16') and dev.type == 'cpu':
        print(json.dumps(dict(variant=name, skipped='bf16 autocast is CUDA-only in the kit: this CPU has no bf16 '
                              'matmul units (no AVX512-BF16/AMX), bf16 matmuls run far slower than fp32 (see '
                              '--bf16-demo)')))
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

    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    times = []
    with PeakRSS() as mem:
        t0 = time.perf_counter(); out = iteration(keep=True); first = time.perf_counter() - t0
        keep = {k: out[k].detach().float().cpu() for k in LOSSES + PREDS}
        del out
        for _ in range(args.iters):
            t0 = time.perf_counter(); iteration(); times.append(time.perf_counter() - t0)
    torch.save(keep, args.out)
    peak = torch.cuda.max_memory_allocated() if dev.type == 'cuda' else mem.delta
    print(json.dumps(dict(variant=name, times=times, first=first, peak_bytes=peak, out=args.out)))


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
    results = {n: dict(variant=n, times=[], peaks=[], firsts=[]) for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):                 # interleaved: every round runs every variant once
            for n in names:
                out = f'{tmp}/{n}_{r}.pt'
                res = run_variant_subprocess(__file__, n, ['--out', out, '--iters', str(args.iters), '--crop',
                                                           str(args.crop), '--batch', str(args.batch), '--device',
                                                           args.device, '--threads', str(args.threads)])
                R = results[n]
                if 'error' in res or 'skipped' in res:
                    R.update(res); print(f'round {r} {n}: {res}', file=sys.stderr, flush=True); continue
                R['times'] += res['times']; R['firsts'].append(res['first']); R['peaks'].append(res['peak_bytes'])
                if r == 0: R['outputs'] = torch.load(out)
                print(f"round {r} {n}: {[round(t, 2) for t in res['times']]} s", file=sys.stderr, flush=True)
    ref = results.get('faithful', {}).get('outputs')
    rows = []
    for n in names:
        R = results[n]
        if 'skipped' in R or 'error' in R:
            rows.append(dict(variant=n, **{'s/iter': 'skipped' if 'skipped' in R else 'error'})); continue
        t = sorted(R['times'])[len(R['times']) // 2]
        row = {'variant': n, 's/iter': f'{t:.2f}', 'images/s': f'{3 * args.batch / t:.2f}',
               'first iter s': f'{max(R["firsts"]):.1f}', 'peak MB': f'{max(R["peaks"]) / 2**20:.0f}'}
        if ref is not None:
            dl, dp = diffs(R['outputs'], ref)
            row.update({'max|Δloss|': f'{dl:.1e}', 'max|Δpred|': f'{dp:.1e}'})
        if args.crop == 128 and args.batch == 2:
            gl, gp = vs_golden(R['outputs'])
            row.update({'golden loss rel': f'{gl:.1e}', 'golden pred abs': f'{gp:.1e}'})
        if 'faithful' in results and results['faithful']['times']:
            tf = sorted(results['faithful']['times'])[len(results['faithful']['times']) // 2]
            row['speed-up'] = f'{tf / t:.2f}x'
        rows.append(row)
    print(f"\nSemiVL training iteration: ViT-B/16 (random recipe weights), crop {args.crop}, batch {args.batch}, "
          f"{args.threads} threads, device {args.device}; {args.rounds} interleaved rounds x {args.iters} timed "
          f"iterations per variant (median); images/s counts labeled + unlabeled + mix-partner samples (3 x batch)")
    print(f"anchor: {OFFICIAL_ANCHOR}\n")
    print(fmt_table(rows, ['variant', 's/iter', 'speed-up', 'images/s', 'first iter s', 'peak MB', 'max|Δloss|',
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
              f"{d['torch.bfloat16']*1e3:.1f} ms in bf16 ({d['torch.bfloat16'] / d['torch.float32']:.0f}x slower)")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--iters', type=int, default=2, help='timed iterations per variant and round (after 1 warm-up)')
    ap.add_argument('--crop', type=int, default=128)
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--one', help=argparse.SUPPRESS)
    ap.add_argument('--out', help=argparse.SUPPRESS)
    a = ap.parse_args()
    run_one(a.one, a) if a.one else main(a)
