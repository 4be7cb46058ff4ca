"""Where the time of one sliding-window evaluation goes, per variant of `sliding_window.py`: wall and CPU seconds
of each model stage (backbone, decoder parts, output resize, window merge) and the busiest-thread ratio
CPU/wall (2.0 = both threads busy), then the top operators of `torch.profiler`.

Same model and 512x683 image as `sliding_window.py`; one warm-up call, then one call timed per stage (forward
hooks around the stages: `perf_counter` for wall, `process_time` for CPU of all threads) and one call under the
profiler. Each variant runs in a fresh interpreter; variants are interleaved over `--rounds`.

    python benchmarks/profile_sliding_window.py --variants faithful kit --rounds 2
"""
import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch

from common import build_model, fmt_table

STAGES = ['backbone', 'decode_head.conv1', 'decode_head.aspp', 'decode_head.text_proj', 'decode_head.layers',
          'decode_head.skip_proj', 'decode_head.up1', 'decode_head.up2', 'decode_head.head']


class StageClock:
    "Accumulate wall and process-CPU seconds spent inside each named stage (module forwards or wrapped calls)"
    def __init__(self):
        self.wall, self.cpu, self.calls, self._t = defaultdict(float), defaultdict(float), defaultdict(int), {}
    def start(self, name): self._t[name] = (time.perf_counter(), time.process_time())
    def stop(self, name):
        w, c = self._t.pop(name)
        self.wall[name] += time.perf_counter() - w; self.cpu[name] += time.process_time() - c; self.calls[name] += 1
    def hook(self, module, name):
        module.register_forward_pre_hook(lambda *a: self.start(name))
        module.register_forward_hook(lambda *a: self.stop(name))
    def wrap(self, fn, name):
        def timed(*a, **k):
            self.start(name)
            try: return fn(*a, **k)
            finally: self.stop(name)
        return timed


def run_one(name, args):
    "Stage table and profiler table of one variant, printed"
    import semivl.evaluate as ev
    from sliding_window import VARIANTS
    from train_step import apply_variant
    torch.set_num_threads(args.threads)
    desc, opts = VARIANTS[name]
    model = build_model(512).eval()
    wrap = apply_variant(model, opts)
    img = torch.randn(1, 3, 512, 683, generator=torch.Generator().manual_seed(0))
    wb = opts.get('window_batch', 8)
    call = lambda: ev.zegclip_sliding_window(model, img, None, 512, 426, wb)
    with torch.no_grad(), wrap(): call()                              # warm-up

    clock = StageClock()
    for s in STAGES:
        mods = [model.get_submodule(s)] if not s.endswith(('layers', 'skip_proj')) else [model.get_submodule(s)[i] for i in range(len(model.get_submodule(s)))]
        for m in mods: clock.hook(m, s)
    model.decode_head.resize_output = clock.wrap(model.decode_head.resize_output, 'resize_output')
    clock.hook(model, 'model calls')
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad(), wrap(): call()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = 'merge + resize to image'                                   # everything outside the model calls
    clock.wall[m], clock.cpu[m] = wall - clock.wall['model calls'], cpu - clock.cpu['model calls']
    rows = [{'stage': s, 'calls': clock.calls.get(s, ''), 'wall s': f'{clock.wall[s]:.3f}', 'CPU s': f'{clock.cpu[s]:.3f}',
             'CPU/wall': f'{clock.cpu[s] / max(clock.wall[s], 1e-9):.2f}'} for s in [*STAGES, 'resize_output', 'model calls', m]]
    rows.append({'stage': 'total', 'wall s': f'{wall:.3f}', 'CPU s': f'{cpu:.3f}', 'CPU/wall': f'{cpu / wall:.2f}'})
    print(f'\n=== {name} (window_batch={wb}, {args.threads} threads): per-stage wall and CPU seconds of one call')
    print(fmt_table(rows, ['stage', 'calls', 'wall s', 'CPU s', 'CPU/wall']))

    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), wrap(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof: call()
    print(f'\n=== {name}: torch.profiler, top {args.top} operators by self CPU time (profiler CPU time = wall of the calling thread)')
    print(prof.key_averages(group_by_input_shape=True).table(sort_by='self_cpu_time_total', row_limit=args.top,
                                                             max_name_column_width=40, max_shapes_column_width=70))


def main(args):
    for r in range(args.rounds):
        for n in args.variants:
            print(f'\n##### round {r}: {n}', flush=True)
            subprocess.run([sys.executable, __file__, '--one', n, '--threads', str(args.threads), '--top', str(args.top)],
                           check=False)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--variants', nargs='+', default=['faithful', 'kit'])
    ap.add_argument('--rounds', type=int, default=1)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--top', type=int, default=15)
    ap.add_argument('--one', help=argparse.SUPPRESS)
    a = ap.parse_args()
    run_one(a.one, a) if a.one else main(a)
