"""Per-update latency of the pseudo-label viewer on CPU: the toy world (64x64, tiny CLIP) and ViT-B/16 at 512x512
(random weights; timing only). Prints the time of the first view of an image (runs the networks) and of a cached
control update (thresholds, opacity, class toggle, text source, view), with the machine it ran on.

    python benchmarks/viewer_latency.py [--n 20] [--skip-vitb]
"""
import argparse, os, platform, time

import numpy as np
import torch
import torch.nn.functional as F


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads, CPU fp32"


def time_updates(v, n: int) -> dict:
    "Seconds: first view of unseen images, batched precompute per image, cached control updates, a new text source"
    first = []
    for i in (1, 2):
        t0 = time.perf_counter(); v.index.value = i; first.append(time.perf_counter() - t0)
    t0 = time.perf_counter(); v.precompute(progress=False)
    pre = (time.perf_counter() - t0) / max(1, len(v.state) - 3)
    rng = np.random.default_rng(0)
    moves = [lambda: setattr(v.thresh, 'value', float(rng.uniform(.5, 1))),
             lambda: setattr(v.guidance_thresh, 'value', float(rng.uniform(.5, 1))),
             lambda: setattr(v.opacity, 'value', float(rng.uniform(.2, 1))),
             lambda: setattr(v.class_toggles[int(rng.integers(len(v.class_toggles)))], 'value',
                             not v.class_toggles[0].value),
             lambda: setattr(v.aug, 'value', ['weak', 'strong', 'cutmix'][int(rng.integers(3))]),
             lambda: setattr(v.index, 'value', int(rng.integers(len(v.state))))]
    ts = []
    for k in range(n):
        t0 = time.perf_counter(); moves[k % len(moves)](); ts.append(time.perf_counter() - t0)
    srcs = list(v.text_source.options)
    t0 = time.perf_counter(); v.text_source.value = srcs[-1]; new_src = time.perf_counter() - t0
    return dict(update_median=np.median(ts), update_max=np.max(ts), first_view=np.median(first), precompute=pre,
                new_text=new_src)


def report(name: str, r: dict):
    print(f"{name}\n  cached control update: median {r['update_median'] * 1e3:.1f} ms, max {r['update_max'] * 1e3:.1f} ms"
          f"\n  first view of an unseen image (networks run): {r['first_view']:.2f} s"
          f"\n  batched precompute: {r['precompute']:.2f} s/image"
          f"\n  switch to a new text source: {r['new_text'] * 1e3:.1f} ms")


def toy(n: int):
    from semivl.viewer import toy_viewer
    v = toy_viewer('val')  # the 'toy' SemiVL model, freshly initialised, + its tiny CLIP teacher
    report('toy world 64x64, toy SemiVL model + tiny CLIP', time_updates(v, n))


def vitb(n: int, size: int = 512, n_images: int = 6):
    from semivl.clip import load_clip
    from semivl.segmentor import ModelCfg, SemiVLSegmentor
    from semivl.viewer import PseudoLabelViewer
    from semivl.viewer_model import segmentor_viewer_model
    torch.manual_seed(0)
    clip, _ = load_clip('ViT-B-16', tokenizer=lambda x: x)  # random weights: timing only
    counts = [45, 3, 3, 1, 4, 4, 2, 4, 2, 3, 1, 2, 2, 4, 4, 4, 3, 1, 1, 2, 3]  # VOC concept4 (the official concept lists)
    c2c = torch.repeat_interleave(torch.arange(21), torch.tensor(counts))
    texts = {'single': F.normalize(torch.randn(21, 512), dim=1), 'concepts': F.normalize(torch.randn(len(c2c), 512), dim=1)}
    seg = SemiVLSegmentor(ModelCfg.preset('voc'), clip, texts['single'], texts['concepts'], c2c)
    model = segmentor_viewer_model(seg, texts, {'concepts': c2c})
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), rng.integers(0, 21, (size, size)).astype(np.uint8))
              for _ in range(n_images)]
    v = PseudoLabelViewer(images, model)
    report(f'ViT-B/16 {size}x{size}, VOC SemiVL model (21 classes, 98 concepts), random weights', time_updates(v, n))


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=20, help='control updates to time')
    ap.add_argument('--skip-vitb', action='store_true')
    a = ap.parse_args()
    print(machine())
    toy(a.n)
    if not a.skip_vitb: vitb(a.n)
