"""Speed and memory of sliding-window evaluation of one 512x683 image (VOC val-like), per variant.

ViT-B/16 VOC model (crop 512, random recipe weights from `tests/golden/recipe.py`, golden head weights),
`semivl.evaluate.zegclip_sliding_window` with crop 512 / stride 426 (two 512x512 windows), eval mode, no autograd,
`torch.set_num_threads(2)`. Each variant runs in a fresh interpreter; variants are interleaved over `--rounds`.
Prints s/image (median), images/s, the first call of each round (warm-up / compilation; round 0 compiles with an
empty inductor cache), peak memory (CPU: the kernel's RSS high-water mark over all calls above the RSS of the built
model; CUDA max_memory_allocated) and the max |difference| of the merged logits and the share of pixels
whose argmax changes, against the faithful variant.

    python benchmarks/sliding_window.py
    python benchmarks/sliding_window.py --variants faithful kit --rounds 1
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from common import build_model, firsts, fmt_table, peak_rss, reset_peak_rss, run_rounds, timing_row

VARIANTS = {
    'faithful': ("official: one window per forward, open_clip blocks + separate value-path pass, the unused last "
                 "block, naive (math) attention, skip features repeated per class and concatenated, torch.no_grad", dict(faithful=True, math_attn=True, window_batch=1)),
    'faithful+sdpa': ("faithful, attention through scaled_dot_product_attention's fused kernel",
                      dict(faithful=True, window_batch=1)),
    'kit': ("kit defaults: windows batched (window_batch=8), fused blocks, last block's attention skipped, SDPA, "
            "skip conv once per image, torch.no_grad", {}),
    'kit+inference_mode': ("kit under torch.inference_mode instead of no_grad", dict(inference_mode=True)),
    'kit+channels_last': ("kit + channels_last decoder", dict(channels_last=True)),
    'kit+compile': ("kit + torch.compile of backbone and decoder (inductor)", dict(compile=True)),
    'kit+bf16': ("kit + bf16 autocast (CUDA, or a CPU with AVX512-BF16/AMX)", dict(bf16=True)),
}
DEFAULT_VARIANTS = list(VARIANTS)


def run_one(name, args):
    from semivl.evaluate import zegclip_sliding_window
    from train_step import apply_variant
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    desc, opts = VARIANTS[name]
    from train_step import cpu_has_bf16
    if opts.get('bf16') and dev.type == 'cpu' and not cpu_has_bf16():
        print(json.dumps(dict(variant=name, skipped='bf16 autocast is CUDA-only in the kit (no bf16 matmul units '
                              'on this CPU; see benchmarks/train_step.py --bf16 demo line)')))
        return
    model = build_model(512).to(dev).eval()
    wrap = apply_variant(model, opts)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 512, 683, generator=g).to(dev)
    grad_ctx = torch.inference_mode if opts.get('inference_mode') else torch.no_grad
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)

    def call():
        with grad_ctx(), wrap():
            out = zegclip_sliding_window(model, img, None, 512, 426, opts.get('window_batch', 8))
        sync()
        return out

    import gc; gc.collect()
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()
    base = reset_peak_rss()                    # CPU peak: kernel high-water mark above the built model, all calls
    times, cpu = [], []
    t0 = time.perf_counter(); out = call(); first = time.perf_counter() - t0
    torch.save(out.cpu().clone(), args.out); del out
    for _ in range(args.iters):
        t0, c0 = time.perf_counter(), time.process_time(); call()
        times.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated() if dev.type == 'cuda' else peak_rss() - base
    print(json.dumps(dict(variant=name, times=times, cpu=cpu, first=first, peak_bytes=peak)))


def main(args):
    names = args.variants
    results = run_rounds(__file__, names, args.rounds, ['--iters', str(args.iters), '--device', args.device,
                                                     '--threads', str(args.threads)])
    ref = results.get('faithful', {}).get('out')
    rows = []
    for n in names:
        row, t = timing_row(n, results, 's/image')
        if t is not None:
            R = results[n]
            row.update({'images/s': f'{1 / t:.3f}', 'first call s': firsts(R)})
            if ref is not None:
                row['max|Δlogit|'] = f'{(R["out"] - ref).abs().max().item():.1e}'
                row['argmax changed'] = f'{(R["out"].argmax(1) != ref.argmax(1)).float().mean().item():.1e}'
        rows.append(row)
    print(f"\nzegclip sliding window (crop 512, stride 426: 2 windows) of one 512x683 image: ViT-B/16 VOC model, "
          f"{args.threads} threads, device {args.device}; {args.rounds} interleaved rounds x {args.iters} timed calls "
          f"per variant (median); CPU s = user+sys seconds of the process (less load-dependent than wall-clock, but an OpenMP thread that waits for a descheduled partner spins, so it grows under oversubscription too); best = fastest single timed sample (least disturbed by other jobs)\n")
    print(fmt_table(rows, ['variant', 's/image', 'speed-up', 'CPU s/image', 'CPU speed-up', 'best s/image', 'images/s', 'first call s', 'peak MB', 'max|Δlogit|',
                           'argmax changed']))
    print('\nGolden tolerance for sliding-window logits: atol 1e-5 (head logits of the x100-scaled head: rtol/atol 1e-4)')
    for n in names:
        if 'skipped' in results[n]: print(f'{n}: skipped - {results[n]["skipped"]}')
        if 'error' in results[n]: print(f'{n}: error - {results[n]["error"]}')
    print('\nVariants:')
    for n in names: print(f'  {n}: {VARIANTS[n][0]}')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--iters', type=int, default=1, help='timed calls per variant and round (after 1 warm-up)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--one', help=argparse.SUPPRESS)
    ap.add_argument('--out', help=argparse.SUPPRESS)
    a = ap.parse_args()
    run_one(a.one, a) if a.one else main(a)
