"""The training loop as real processes: SIGKILL + resume is bit-identical; 2-process torchrun (gloo) equals grad accumulation."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from semivl.checkpoint import load_checkpoint

SCRIPT = textwrap.dedent('''
    import os, sys, time, torch, torch.nn as nn
    from semivl.core import IGNORE_INDEX
    from semivl.train import train, UNLABELED_KEYS
    from semivl.distributed import init_distributed, close_distributed
    from semivl.train_config import TrainCfg

    out_dir, mode = sys.argv[1], sys.argv[2]          # mode: plain | slow | accum | dist
    torch.set_num_threads(1)

    class Stub(nn.Module):
        "Segmentor contract; random FP keep masks, or (dist/accum) a function of the features"
        def __init__(s, n=3, ch=8):
            super().__init__()
            s.backbone = nn.ModuleDict(dict(stem=nn.Conv2d(3, ch, 3, padding=1), attn=nn.Conv2d(ch, ch, 1)))
            s.backbone.stem.requires_grad_(False)
            s.decode_head = nn.ModuleDict(dict(ln=nn.GroupNorm(1, ch), cls=nn.Conv2d(ch, n, 1)))
            s.clip_encoder = nn.Conv2d(3, n, 1).requires_grad_(False)
        def feats(s, x): return s.backbone.attn(s.backbone.stem(x).relu())
        def head(s, f): return s.decode_head.cls(s.decode_head.ln(f)) * 5
        def forward(s, x): return s.head(s.feats(x))
        def forward_fp(s, x, fp_keep_masks=None, p=0.5, fp_rows=None):
            f = s.feats(x)
            n = f.shape[0] if fp_rows is None else fp_rows      # perturb the last n images
            if mode in ('plain', 'slow'): keep = torch.rand(n, f.shape[1]) > 0.5     # consumes the global RNG
            else: keep = f[-n:].detach().mean((2, 3)) > 0      # rank-independent
            return s.head(torch.cat([f, f[-n:] * keep[:, :, None, None] * 2])).split([f.shape[0], n])
        @torch.no_grad()
        def maskclip_pseudo_label(s, x, conf_thresh=0.9):
            c, l = (s.clip_encoder(x) * 20).softmax(1).max(1)
            return l.masked_fill(c < conf_thresh, IGNORE_INDEX)

    class DS(torch.utils.data.Dataset):
        def __init__(s, mode, n=16, hw=16, order=None):
            g = torch.Generator().manual_seed(5)
            s.mode, s.n, s.order = mode, n, order or list(range(n))
            s.img = torch.randn(n, 3, hw, hw, generator=g); s.mask = torch.randint(0, 3, (n, hw, hw), generator=g)
            s.u = {k: torch.randn(n, 3, hw, hw, generator=g) for k in ('img_w', 'img_s1', 'img_s2')}
            s.u['ignore_mask'] = torch.zeros(n, hw, hw, dtype=torch.long); s.u['ignore_mask'][:, -2:] = 255
            for k in ('cutmix_box1', 'cutmix_box2'): s.u[k] = (torch.rand(n, hw, hw, generator=g) > .5).long()
            for k in ('img_w', 'img_s1', 'img_s2', 'ignore_mask'):
                s.u[k + '_other'] = torch.roll(s.u[k], 1, 0)
        def __len__(s): return s.n
        def __getitem__(s, i):
            if mode == 'slow': time.sleep(0.03)
            i = s.order[i]
            if s.mode == 'l':   # 'augmentation' noise from the global RNG (off where ranks must agree)
                noise = 0.1 * torch.randn(3, 16, 16) if mode in ('plain', 'slow') else 0
                return dict(img=s.img[i] + noise, mask=s.mask[i])
            return {k: v[i] for k, v in s.u.items()}

    rank, world, _ = init_distributed()
    bs = 2
    if mode == 'dist':
        mk = lambda m: torch.utils.data.DataLoader(DS(m), bs, drop_last=True, sampler=torch.utils.data.DistributedSampler(
            DS(m), world, rank, shuffle=False))
    elif mode == 'accum':     # micro-batches in the order rank 0, rank 1 of the distributed run
        order = [4 * s + r + 2 * j for s in range(4) for r in (0, 1) for j in (0, 1)]
        mk = lambda m: torch.utils.data.DataLoader(DS(m, order=order), bs, drop_last=True, shuffle=False)
    else:
        mk = lambda m: torch.utils.data.DataLoader(DS(m), bs, drop_last=True, shuffle=True, generator=torch.Generator())
    torch.manual_seed(0)
    model = Stub()
    os.makedirs(out_dir, exist_ok=True)
    if rank == 0: torch.save(model.state_dict(), os.path.join(out_dir, 'init.pt'))
    cfg = TrainCfg(epochs=2 if mode in ('dist', 'accum') else 3, log_every=1,
                   grad_accum=2 if mode == 'accum' else 1, debug_every=5 if mode in ('plain', 'slow') else None)
    train(cfg, model, mk('l'), mk('u'), out_dir=out_dir, ckpt_every=1, progress=False)
    close_distributed()
''')


REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1',
           PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))


def _run(tmp_path, out, mode):
    script = tmp_path / 'run.py'
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(out), mode], cwd=tmp_path, env=ENV)


def _final(out):
    "The checkpoint a resume would start from (a kill between the renames of a save leaves only last.prev.pt)"
    return load_checkpoint(Path(out) / 'last.pt', fallback=True)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    full = tmp_path / 'full'
    assert _run(tmp_path, full, 'plain').wait(120) == 0
    cut = tmp_path / 'cut'
    p = _run(tmp_path, cut, 'slow')
    csv = cut / 'metrics.csv'
    t0 = time.time()
    while time.time() - t0 < 120:              # kill once a few iterations are logged
        if csv.exists() and len(csv.read_text().splitlines()) >= 5: break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait(30) == -signal.SIGKILL
    killed_at = _final(cut)['iteration']
    assert 0 < killed_at < 24
    assert _run(tmp_path, cut, 'plain').wait(120) == 0
    a, b = _final(full), _final(cut)
    assert a['iteration'] == b['iteration'] == 24
    for k, v in a['model'].items(): assert torch.equal(v, b['model'][k]), k
    for s_a, s_b in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(s_a['exp_avg'], s_b['exp_avg'])
    # debug dumps (every 5 iterations) are the same whether written before the kill or after the resume
    names = [f'it{i:06d}.npz' for i in (5, 10, 15, 20)]
    assert sorted(os.listdir(full / 'debug')) == sorted(os.listdir(cut / 'debug')) == names
    for n in names:
        with np.load(full / 'debug' / n) as za, np.load(cut / 'debug' / n) as zb:
            assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files), n


@pytest.mark.slow
def test_torchrun_two_processes_match_grad_accumulation(tmp_path):
    dist_out, acc_out = tmp_path / 'dist', tmp_path / 'acc'
    (tmp_path / 'run.py').write_text(SCRIPT)
    p = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                          str(tmp_path / 'run.py'), str(dist_out), 'dist'], cwd=tmp_path, env=ENV)
    q = _run(tmp_path, acc_out, 'accum')
    assert p.wait(180) == 0 and q.wait(180) == 0
    a, b = _final(dist_out), _final(acc_out)
    assert a['iteration'] == b['iteration'] == 8
    assert len(a['rng']) == 2                  # both ranks' RNG states are in the checkpoint
    init = torch.load(dist_out / 'init.pt')
    assert (a['model']['decode_head.cls.weight'] - init['decode_head.cls.weight']).abs().max() > 1e-3  # it trained
    for k, v in a['model'].items():
        torch.testing.assert_close(v, b['model'][k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_toy_world_semivl_smoke(tmp_path):
    "Data pipeline (uint8 images) + toy segmentor + loop: 2 iterations, an evaluation, checkpoints, logs"
    import csv
    import torch.nn.functional as F
    from torch.utils.data import Subset
    from semivl.data import build_loader, semi_datasets
    from semivl.segmentor import ModelCfg, SemiVLSegmentor
    from semivl.toyclip import create_toy_clip
    from semivl.toyworld import ensure_toyworld
    from semivl.train import train
    from semivl.checkpoint import load_checkpoint
    from semivl.train_config import TrainCfg
    torch.manual_seed(0)
    ds = semi_datasets(ensure_toyworld(), '20', uint8=True)
    model = SemiVLSegmentor(ModelCfg.preset('toy'), create_toy_clip(), F.normalize(torch.randn(11, 128), dim=-1))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    lx, lu = (build_loader(ds[k], batch_size=1, num_workers=0) for k in ('train_l', 'train_u'))
    lv = build_loader(Subset(ds['val'], range(1)), batch_size=1, shuffle=False, num_workers=0)
    cfg = TrainCfg(epochs=None, iters=2, eval_every=2, eval_crop=64, eval_stride=43, log_every=1)
    r = train(cfg, model, lx, lu, lv, num_classes=11, out_dir=tmp_path, stop_after=2, progress=False)
    assert r['iteration'] == 2 and 0 <= r['best_miou'] <= 100
    rows = list(csv.DictReader(open(tmp_path / 'metrics.csv')))
    assert [row['it'] for row in rows] == ['1', '2', '2'] and rows[-1]['eval/mIoU'] != ''
    for row in rows[:2]:
        for k in ('train/loss', 'train/loss_x', 'train/loss_guidance_fp'): assert np.isfinite(float(row[k])), k
    ck = load_checkpoint(tmp_path / 'best.pt')
    assert ck['iteration'] == 2 and ck['config']['method'] == 'semivl' and ck['eval']['miou'] == r['best_miou']
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.startswith('backbone.') for n in moved) and any(n.startswith('decode_head.') for n in moved)
    assert not any(p.requires_grad for p in model.clip_encoder.parameters())


@pytest.mark.parametrize('pretend_no_bf16', [False, True])
def test_bf16_autocast_on_cpu_where_native(tmp_path, monkeypatch, pretend_no_bf16):
    "amp_bf16 runs the toy model's forward in bf16 on a CPU with AVX512-BF16/AMX, and says why it won't elsewhere"
    import warnings
    import semivl.train
    import torch.nn.functional as F
    from semivl.data import build_loader, semi_datasets
    from semivl.segmentor import ModelCfg, SemiVLSegmentor
    from semivl.toyclip import create_toy_clip
    from semivl.toyworld import ensure_toyworld
    from semivl.train import train
    from semivl.train_config import TrainCfg
    if pretend_no_bf16: monkeypatch.setattr(semivl.train, 'native_bf16', lambda d: (False, 'no bf16 here'))
    native, why = semivl.train.native_bf16('cpu')
    torch.manual_seed(0)
    ds = semi_datasets(ensure_toyworld(), '20', uint8=True)
    model = SemiVLSegmentor(ModelCfg.preset('toy'), create_toy_clip(), F.normalize(torch.randn(11, 128), dim=-1))
    seen = []
    model.decode_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    lx = build_loader(ds['train_l'], batch_size=2, num_workers=0)
    cfg = TrainCfg(method='supervised', epochs=None, iters=2, log_every=1, amp_bf16=True)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        train(cfg, model, lx, None, out_dir=tmp_path, stop_after=2, progress=False)
    assert set(seen) == ({torch.bfloat16} if native else {torch.float32}), (seen, why)
    assert any(f'amp_bf16: {why}' in str(x.message) for x in w) != native


def _toy_supervised(**cfg):
    "(TrainCfg, model, labeled loader) of a 4-iteration supervised toy run with a random tiny CLIP"
    import torch.nn.functional as F
    from semivl.data import build_loader, semi_datasets
    from semivl.segmentor import ModelCfg, SemiVLSegmentor
    from semivl.toyclip import create_toy_clip
    from semivl.toyworld import ensure_toyworld
    from semivl.train_config import TrainCfg
    torch.manual_seed(0)
    ds = semi_datasets(ensure_toyworld(), '20', uint8=True)
    model = SemiVLSegmentor(ModelCfg.preset('toy'), create_toy_clip(), F.normalize(torch.randn(11, 128), dim=-1))
    lx = build_loader(ds['train_l'], batch_size=2, num_workers=0)
    return TrainCfg(method='supervised', epochs=None, iters=4, log_every=1, **cfg), model, lx


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    "resume=True at (or past) stop_after returns the same weights and iteration; resume=True without a checkpoint is an error"
    import warnings
    from semivl.train import train
    cfg, model, lx = _toy_supervised()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint .* resume='auto'"):
        train(cfg, model, lx, None, out_dir=tmp_path, resume=True, stop_after=2, progress=False)
    train(cfg, model, lx, None, out_dir=tmp_path, resume='auto', stop_after=2, progress=False)   # nothing yet: a new run
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        r = train(cfg, model, lx, None, out_dir=tmp_path, resume=True, stop_after=2, progress=False)
    assert r['iteration'] == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert load_checkpoint(tmp_path/'last.pt')['iteration'] == 2


def test_old_guidance_config_names_map_with_a_warning():
    "Configs of earlier versions (mcc_lambda, mcc_conf_thresh, mcc_loss_reduce) load under today's names, with a warning"
    from semivl.train_config import TrainCfg
    old = dict(mcc_lambda=[0.2, 0.0], mcc_conf_thresh=0.8, mcc_loss_reduce='mean', lr=1e-3)
    with pytest.warns(DeprecationWarning) as w:
        cfg = TrainCfg.from_dict(old)
    assert (cfg.guidance_lambda, cfg.guidance_conf_thresh, cfg.guidance_loss_reduce, cfg.lr) == ((0.2, 0.0), 0.8, 'mean', 1e-3)
    msgs = sorted(str(x.message) for x in w)
    assert len(msgs) == 3 and all('is deprecated: it is now called' in m for m in msgs)
    assert any("mcc_lambda" in m and "'guidance_lambda'" in m for m in msgs)
    with pytest.warns(DeprecationWarning, match="now called 'guidance_conf_thresh'"):
        assert TrainCfg().update(mcc_conf_thresh=0.7).guidance_conf_thresh == 0.7
    with pytest.raises(KeyError, match="give 'guidance_lambda' only"):
        TrainCfg().update(mcc_lambda=(0.1, 0.), guidance_lambda=(0.1, 0.))
    assert not any(k.startswith('mcc') for k in TrainCfg().to_dict())             # new files carry today's names only


def test_an_old_runs_metrics_csv_gets_todays_columns(tmp_path):
    "Resuming a run of an earlier version renames its train/loss_mc_* and train/mcc_lambda columns"
    import csv
    from semivl.train import MetricLog
    (tmp_path/'metrics.csv').write_text('it,train/loss,train/loss_mc_s1,train/mcc_lambda\n1,2.0,0.5,0.1\n')
    log = MetricLog(tmp_path, tensorboard=False)
    log.log(2, **{'train/loss': 1.5, 'train/loss_guidance_s1': 0.4, 'train/guidance_lambda': 0.09})
    rows = list(csv.DictReader(open(tmp_path/'metrics.csv')))
    assert list(rows[0]) == ['it', 'train/loss', 'train/loss_guidance_s1', 'train/guidance_lambda']
    assert [r['train/loss_guidance_s1'] for r in rows] == ['0.5', '0.4']


def test_an_old_checkpoint_resumes_and_evaluates(tmp_path):
    "A last.pt / model.pt whose config holds the old mcc_* names resumes (changes still detected) and evaluates"
    import warnings
    from semivl.checkpoint import save_checkpoint
    from semivl.run_eval import checkpoint_configs
    from semivl.segmentor import ModelCfg
    from semivl.train import train
    cfg, model, lx = _toy_supervised(guidance_conf_thresh=0.8)
    train(cfg, model, lx, None, out_dir=tmp_path, stop_after=2, progress=False)
    ck = load_checkpoint(tmp_path/'last.pt')
    old = {{'guidance_lambda': 'mcc_lambda', 'guidance_conf_thresh': 'mcc_conf_thresh',
            'guidance_loss_reduce': 'mcc_loss_reduce'}.get(k, k): v for k, v in ck['config'].items()
           if k != 'guidance_offsets'}   # a setting added after the rename: old checkpoints lack it
    assert 'mcc_conf_thresh' in old and not any(k.startswith('guidance') for k in old)
    save_checkpoint(tmp_path/'last.pt', {**ck, 'config': old})
    with warnings.catch_warnings():                   # the same settings under their old names: no warning at all
        warnings.simplefilter('error')
        r = train(cfg, model, lx, None, out_dir=tmp_path, resume=True, stop_after=3, progress=False)
    assert r['iteration'] == 3
    ck = load_checkpoint(tmp_path/'last.pt')
    assert ck['config']['guidance_conf_thresh'] == 0.8 and 'mcc_conf_thresh' not in ck['config']   # saved anew
    save_checkpoint(tmp_path/'last.pt', {**ck, 'config': {**old, 'mcc_conf_thresh': 0.5}})
    with pytest.warns(UserWarning, match=r"changed config .*'guidance_conf_thresh': \(0.5, 0.8\)"):
        assert train(cfg, model, lx, None, out_dir=tmp_path, resume=True, stop_after=4, progress=False)['iteration'] == 4
    # evaluation reads the training config of a model.pt (train_cfg) or last.pt (config) with the old names, silently
    for key in ('train_cfg', 'config'):
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            mcfg, tcfg = checkpoint_configs({'model_cfg': ModelCfg.preset('toy').to_dict(), key: old}, 'toy')
        assert tcfg.guidance_conf_thresh == 0.8 and tcfg.guidance_lambda == cfg.guidance_lambda
