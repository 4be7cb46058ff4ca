"""Fault injection with real files and real processes: corrupt/truncated/malicious checkpoints, NaN batches, OOM,
Ctrl-C / SIGTERM / SIGKILL during a toy run, read-only and full output folders, corrupt data files, bad configs.
Every test checks the message the user sees and that no saved work was lost."""
import contextlib
import csv
import errno
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from semivl.core import IGNORE_INDEX
from semivl.train import NonFiniteLossError, train
from semivl.checkpoint import CheckpointError, checksum_path, file_sha256, load_checkpoint, prev_path, save_checkpoint
from semivl.preflight import validate
from semivl.train_config import ConfigError, TrainCfg

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1',
           PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
pytestmark = pytest.mark.usefixtures('one_thread')   # conftest.py


# ---------------------------------------------------------------- a toy world: stub segmentor + in-memory data
class Stub(nn.Module):
    "Segmentor contract on a few convolutions; `fail_at(it)` can raise from the forward"
    def __init__(self, n=3, ch=8, fail=None):
        super().__init__()
        self.backbone = nn.ModuleDict(dict(stem=nn.Conv2d(3, ch, 3, padding=1), attn=nn.Conv2d(ch, ch, 1)))
        self.backbone.stem.requires_grad_(False)
        self.decode_head = nn.ModuleDict(dict(ln=nn.GroupNorm(1, ch), cls=nn.Conv2d(ch, n, 1)))
        self.clip_encoder = nn.Conv2d(3, n, 1).requires_grad_(False)
        self.fail, self.calls = fail, 0
    def feats(self, x):
        self.calls += 1
        if self.fail is not None and self.calls > self.fail: raise self.fail_exc
        return self.backbone.attn(self.backbone.stem(x).relu())
    def head(self, f): return self.decode_head.cls(self.decode_head.ln(f)) * 5
    def forward(self, x): return self.head(self.feats(x))
    def forward_fp(self, x, fp_keep_masks=None, p=0.5, fp_rows=None):
        f = self.feats(x)
        n = f.shape[0] if fp_rows is None else fp_rows           # perturb the last n images
        keep = torch.rand(n, f.shape[1]) > p
        return self.head(torch.cat([f, f[-n:] * keep[:, :, None, None] * 2])).split([f.shape[0], n])
    @torch.no_grad()
    def maskclip_pseudo_label(self, x, conf_thresh=0.9):
        c, l = (self.clip_encoder(x) * 20).softmax(1).max(1)
        return l.masked_fill(c < conf_thresh, IGNORE_INDEX)


class DS(torch.utils.data.Dataset):
    "Fixed random samples; `hook(i)` runs on each access (fault injection), `nan` lists poisoned indices"
    def __init__(self, mode, n=8, hw=16, nan=(), hook=None):
        g = torch.Generator().manual_seed(5)
        self.mode, self.n, self.nan, self.hook = mode, n, set(nan), hook
        self.img = torch.randn(n, 3, hw, hw, generator=g); self.mask = torch.randint(0, 3, (n, hw, hw), generator=g)
        self.u = {k: torch.randn(n, 3, hw, hw, generator=g) for k in ('img_w', 'img_s1', 'img_s2')}
        self.u['ignore_mask'] = torch.zeros(n, hw, hw, dtype=torch.long)
        for k in ('cutmix_box1', 'cutmix_box2'): self.u[k] = (torch.rand(n, hw, hw, generator=g) > .5).long()
        for k in ('img_w', 'img_s1', 'img_s2', 'ignore_mask'): self.u[k + '_other'] = torch.roll(self.u[k], 1, 0)
    def __len__(self): return self.n
    def __getitem__(self, i):
        if self.hook: self.hook(i)
        if self.mode == 'l':
            img = self.img[i].clone()
            if i in self.nan: img[:, 2:5, 2:5] = float('nan')
            return dict(img=img, mask=self.mask[i])
        return {k: v[i] for k, v in self.u.items()}


def loaders(n=8, **kw):
    mk = lambda m, **k: torch.utils.data.DataLoader(DS(m, n, **k), 2, drop_last=True)
    return mk('l', **kw), mk('u')


def run(out_dir, epochs=2, model=None, lx=None, lu=None, **kw):
    torch.manual_seed(0)
    model = model or Stub()
    if lx is None: lx, lu = loaders()
    cfg = TrainCfg(epochs=epochs, log_every=kw.pop('log_every', 1), max_bad_steps=kw.pop('max_bad_steps', 10))
    return model, train(cfg, model, lx, lu, out_dir=out_dir, progress=False, **kw)


def finite(sd): return all(v.isfinite().all() for v in sd.values() if v.is_floating_point())


# ---------------------------------------------------------------- checkpoints
def _two_checkpoints(d):
    ck = d / 'last.pt'
    save_checkpoint(ck, dict(iteration=1, w=torch.randn(4000)), keep_prev=True)
    save_checkpoint(ck, dict(iteration=2, w=torch.randn(4000)), keep_prev=True)
    return ck


@pytest.mark.parametrize('keep', [0, 1, 100, 0.5, -1])
def test_truncated_checkpoint_is_detected_and_previous_offered(tmp_path, keep):
    ck = _two_checkpoints(tmp_path)
    data = ck.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    ck.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r'(?s)corrupt or truncated.*last\.prev\.pt \(iteration 1\) is intact'):
        load_checkpoint(ck)
    with pytest.warns(UserWarning, match='Loaded the previous checkpoint'):
        assert load_checkpoint(ck, fallback=True)['iteration'] == 1
    checksum_path(ck).unlink()                      # without the checksum (a file from elsewhere): torch's own check
    if keep != -1:                                  # (dropping only the last byte can go unnoticed by zip readers)
        with pytest.raises(CheckpointError, match='cannot read checkpoint .*: truncated'): load_checkpoint(ck)


def test_flipped_bytes_are_detected(tmp_path):
    ck = _two_checkpoints(tmp_path)
    good = ck.read_bytes()
    gen = torch.Generator().manual_seed(0)
    for pos in torch.randint(0, len(good), (12,), generator=gen).tolist() + [len(good) // 2, len(good) - 1]:
        b = bytearray(good); b[pos] ^= 0x01; ck.write_bytes(bytes(b))
        with pytest.raises(CheckpointError, match='does not match'): load_checkpoint(ck)
    ck.write_bytes(good)
    assert load_checkpoint(ck)['iteration'] == 2   # the untouched bytes load again


class Evil:
    "Unpickling this writes a marker file (stands for arbitrary code)"
    marker = None
    def __reduce__(self): return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize('fmt', ['torch_zip', 'raw_pickle', 'pickle_protocol0'])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, fmt):
    from semivl.clip import read_state_dict
    marker = tmp_path / 'marker'
    Evil.marker = marker
    f = tmp_path / 'evil.pt'
    payload = dict(model={'w': torch.zeros(2)}, hook=Evil())
    if fmt == 'torch_zip': torch.save(payload, f)
    else: f.write_bytes(pickle.dumps(payload, protocol=0 if fmt.endswith('0') else 2))
    refused = 'nothing in it was run' if fmt == 'pickle_protocol0' else 'refusing to load'   # proto 0: refused even earlier
    with pytest.raises(CheckpointError, match=refused) as e: load_checkpoint(f)
    if fmt != 'pickle_protocol0': assert re.search(r'asks for the Python global [\w.]+', str(e.value))   # names the first refused global
    with pytest.raises(Exception): read_state_dict(f)                    # the CLIP-weights reader refuses too
    with pytest.raises(ConfigError, match=refused): validate(checkpoint=f)
    assert not marker.exists()
    with open(f, 'rb') as fh:                         # the payload is live: an unsafe load does run it
        if fmt == 'torch_zip': torch.load(fh, weights_only=False)
        else: pickle.load(fh)
    assert marker.read_text() == 'pwned'


# ---------------------------------------------------------------- training guards
def test_nan_in_a_batch_skips_the_step_and_training_goes_on(tmp_path):
    lx, lu = loaders(nan=[2])                         # sample 2: labeled batch 1 of each epoch
    with pytest.warns(UserWarning, match=r'iteration 1: non-finite loss or gradients .*update skipped \(1 in a row'):
        model, r = run(tmp_path, lx=lx, lu=lu)
    assert r['iteration'] == 8 and r['skipped_steps'] == 2
    assert finite(model.state_dict())
    ck = load_checkpoint(tmp_path / 'last.pt')
    assert ck['iteration'] == 8 and ck['skipped_steps'] == 2 and finite(ck['model'])
    rows = list(csv.DictReader(open(tmp_path / 'metrics.csv')))
    assert rows[-1]['train/skipped_steps'] == '2' and all(r['train/loss'] not in ('nan', 'inf') for r in rows)


def test_nan_every_step_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    lx2, lu2 = loaders(n=16, nan=range(4, 16))        # every iteration from 2 on is bad
    with pytest.raises(NonFiniteLossError, match=r'(?s)3 consecutive steps .*last\.pt holds the last saved state.*lr='):
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); run(tmp_path, lx=lx2, lu=lu2, max_bad_steps=2, ckpt_every=1)
    ck = load_checkpoint(tmp_path / 'last.pt')
    assert ck['iteration'] == 4 and finite(ck['model'])    # iterations 0-1 trained, 2-3 skipped and saved; 4 stopped


class _OOM(Stub):
    fail_exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_message_points_at_the_memory_table(tmp_path):
    with pytest.raises(torch.OutOfMemoryError, match=r'(?s)iteration 2 .*benchmarks/README\.md.*grad_accum.*amp_bf16'):
        run(tmp_path, model=_OOM(fail=2 * 3), ckpt_every=1)     # 3 forwards per SemiVL step
    assert load_checkpoint(tmp_path / 'last.pt')['iteration'] == 2


# ---------------------------------------------------------------- read-only and full output folders
@contextlib.contextmanager
def tiny_disk(path: Path, size: str = '256k'):
    "A real tmpfs of `size` at `path` (root), or None where mounting is not allowed"
    path.mkdir(parents=True, exist_ok=True)
    ok = os.geteuid() == 0 and subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                                               capture_output=True).returncode == 0
    try: yield path if ok else None
    finally:
        if ok: subprocess.run(['umount', '-l', str(path)], capture_output=True)


def _fill(disk: Path, leave: int = 0):
    "Fill the file system of `disk`, leaving about `leave` bytes"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / 'filler', 'wb') as f:
        with contextlib.suppress(OSError): f.write(b'\0' * max(free - leave, 0))


def _make_full(monkeypatch, disk):
    "Return `fill()`: fills the real tmpfs, or (no mount allowed) makes every checkpoint write fail with ENOSPC"
    if disk is not None: return lambda: _fill(disk)
    import semivl.train as T
    def fill():
        def no_space(self, b): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(T._HashingWriter, 'write', no_space)
    return fill


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    with tiny_disk(tmp_path / 'disk', '1m') as disk:
        out = (disk or tmp_path / 'plain') / 'run'
        fill = _make_full(monkeypatch, disk)
        hook = lambda i: fill() if i == 6 else None   # while loading iteration 3's batch
        lx, lu = torch.utils.data.DataLoader(DS('l', hook=hook), 2, drop_last=True), loaders()[1]
        with pytest.raises(CheckpointError, match=r'could not write checkpoint .*last\.pt: no space left on the device; '
                                                   r'the previous last\.pt is intact'):
            run(out, lx=lx, lu=lu, ckpt_every=1, log_every=100)
        assert not list(out.glob('.*tmp*'))           # no half-written temp files left behind
        ck = load_checkpoint(out / 'last.pt')         # checksum verified
        assert ck['iteration'] == 3 and load_checkpoint(prev_path(out / 'last.pt'))['iteration'] == 2
        if disk is not None: (disk / 'filler').unlink()
        else: monkeypatch.undo()
        _, r = run(out, ckpt_every=1, log_every=100)   # space again: the run resumes and finishes
        assert r['iteration'] == 8


def test_read_only_output_folder_fails_before_any_work(tmp_path):
    with tiny_disk(tmp_path / 'ro', '64k') as disk:
        if disk is not None:
            subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
            out = disk
        else:                                          # not root: a folder without write permission
            out = tmp_path / 'ro'; out.chmod(0o500)
        touched = []
        lx = torch.utils.data.DataLoader(DS('l', hook=touched.append), 2, drop_last=True)
        model = Stub(); before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match=r'output folder .* is not writable \((Read-only file system|Permission denied)\)'):
            run(out, model=model, lx=lx, lu=loaders()[1])
        assert touched == [] and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        with pytest.raises(ConfigError, match='not writable'): validate(out_dir=out)


def test_output_folder_turning_read_only_mid_run_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    with tiny_disk(tmp_path / 'disk', '1m') as disk:
        out = (disk or tmp_path / 'plain') / 'run'
        if disk is not None:
            ro = lambda i: subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True) if i == 6 else None
        else:
            import semivl.train as T
            def ro(i):
                if i == 6: monkeypatch.setattr(T._HashingWriter, 'write', lambda s, b: (_ for _ in ()).throw(
                    OSError(errno.EROFS, os.strerror(errno.EROFS))))
        lx = torch.utils.data.DataLoader(DS('l', hook=ro), 2, drop_last=True)
        with pytest.raises(CheckpointError, match=r'last\.pt: the file system is read-only; the previous last\.pt is intact'):
            with warnings.catch_warnings(): warnings.simplefilter('ignore'); run(out, lx=lx, lu=loaders()[1], ckpt_every=1)
        assert load_checkpoint(out / 'last.pt')['iteration'] == 3


# ---------------------------------------------------------------- interrupts: real processes
class Slow(DS):
    "Data that takes time to load, so that a signal arrives mid-run"
    def __getitem__(self, i):
        time.sleep(0.05)
        return super().__getitem__(i)


def toy_main(out_dir, slow=False):
    "The toy run used by the interrupt tests: 2 epochs of 8 iterations, a checkpoint every 2"
    mk = lambda m: torch.utils.data.DataLoader((Slow if slow else DS)(m, 16), 2, drop_last=True, shuffle=True,
                                               generator=torch.Generator())
    torch.manual_seed(0)
    train(TrainCfg(epochs=2, log_every=1), Stub(), mk('l'), mk('u'), out_dir=out_dir, ckpt_every=2, progress=False)


SCRIPT = textwrap.dedent('''
    import sys, torch
    sys.path.insert(0, sys.argv[3])
    torch.set_num_threads(1)
    from test_faults import toy_main
    toy_main(sys.argv[1], sys.argv[2] == 'slow')
''')


def _start(tmp_path, out, slow):
    script = tmp_path / 'toy_run.py'
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(out), 'slow' if slow else 'plain', str(Path(__file__).parent)],
                            cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(out, n, p, timeout=120):
    csv_path, t0 = out / 'metrics.csv', time.time()
    while time.time() - t0 < timeout:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) > n: return
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.02)
    raise TimeoutError


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "The uninterrupted toy run (16 iterations), in this process"
    d = tmp_path_factory.mktemp('ref')
    toy_main(d / 'out')
    return load_checkpoint(d / 'out' / 'last.pt')


def _assert_same(a, b):
    assert a['iteration'] == b['iteration'] == 16
    for k, v in a['model'].items(): assert torch.equal(v, b['model'][k]), k
    for s_a, s_b in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(s_a['exp_avg'], s_b['exp_avg']) and torch.equal(s_a['exp_avg_sq'], s_b['exp_avg_sq'])


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_sigint_sigterm_save_a_resumable_checkpoint(tmp_path, reference, sig):
    out = tmp_path / 'out'
    p = _start(tmp_path, out, slow=True)
    _wait_for_rows(out, 4, p)
    p.send_signal(sig)
    rc = p.wait(60); err = p.stderr.read()
    name = signal.Signals(sig).name
    m = __import__('re').search(rf'{name}: stopped at iteration (\d+)/16; resumable checkpoint saved to (\S+)\.', err)
    assert m, err
    if sig == signal.SIGTERM: assert rc == 143, (rc, err)               # SystemExit(128 + 15), no traceback
    else: assert rc != 0 and 'TrainingInterrupted' in err, (rc, err)    # a KeyboardInterrupt, as Ctrl-C always is
    stopped = int(m.group(1))
    ck = load_checkpoint(out / 'last.pt')
    logged = max(int(r['it']) for r in csv.DictReader(open(out / 'metrics.csv')))
    assert ck['iteration'] == stopped == logged and 4 <= stopped < 16   # nothing done was lost
    toy_main(out)                                      # resume (in this process) to the end
    _assert_same(reference, load_checkpoint(out / 'last.pt'))


@pytest.mark.slow
def test_sigkill_loses_at_most_the_work_since_the_last_checkpoint(tmp_path, reference):
    out = tmp_path / 'out'
    p = _start(tmp_path, out, slow=True)
    _wait_for_rows(out, 5, p)
    p.kill()
    assert p.wait(30) == -signal.SIGKILL
    logged = max(int(r['it']) for r in csv.DictReader(open(out / 'metrics.csv')))
    ck = load_checkpoint(out / 'last.pt')             # the checksum verifies: no torn file
    assert logged - 2 <= ck['iteration'] <= logged    # ckpt_every=2
    toy_main(out)                                      # resume (in this process) to the end
    _assert_same(reference, load_checkpoint(out / 'last.pt'))


def test_corrupt_last_checkpoint_resumes_from_the_previous_one(tmp_path):
    _, r = run(tmp_path, epochs=1, ckpt_every=1)       # 4 iterations: last.pt @4, last.prev.pt @3
    ck = tmp_path / 'last.pt'
    b = bytearray(ck.read_bytes()); b[len(b) // 3] ^= 0xFF; ck.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match=r'(?s)corrupt or truncated.*Loaded the previous checkpoint .*last\.prev\.pt \(iteration 3\)'):
        _, r = run(tmp_path, epochs=2, ckpt_every=1)
    assert r['iteration'] == 8 and (tmp_path / 'last.pt.corrupt').exists()   # the bad file is kept aside, not reused
    assert load_checkpoint(ck)['iteration'] == 8


def test_crash_between_the_renames_of_a_save_resumes(tmp_path):
    "The state right after save step 3 (old file moved to last.prev.pt, new one not yet in place)"
    run(tmp_path, epochs=1, ckpt_every=1)
    ck = tmp_path / 'last.pt'
    (tmp_path / 'last.prev.pt.sha256').write_text(checksum_path(ck).read_text().replace('last.pt', 'last.prev.pt'))
    os.replace(ck, prev_path(ck))
    with pytest.warns(UserWarning, match=r'(?s)not found.*Loaded the previous checkpoint .*\(iteration 4\)'):
        _, r = run(tmp_path, epochs=2, ckpt_every=1)
    assert r['iteration'] == 8 and load_checkpoint(ck)['iteration'] == 8


SAVER = textwrap.dedent('''
    import sys, torch
    from semivl.checkpoint import save_checkpoint
    out, n = sys.argv[1], 0
    while True:
        n += 1
        save_checkpoint(out, dict(iteration=n, w=torch.full((4_000_000,), float(n))), keep_prev=True)
        print(n, flush=True)
''')


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_never_leaves_a_bad_checkpoint(tmp_path):
    from semivl.checkpoint import _remove_stale_temps
    (tmp_path / 'saver.py').write_text(SAVER)
    for trial, delay in enumerate((None, None, 0.61)):
        d = tmp_path / f't{trial}'; d.mkdir()
        p = subprocess.Popen([sys.executable, str(tmp_path / 'saver.py'), str(d / 'last.pt')], env=ENV,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == '1'      # one complete save, then kill during a later one
        if delay is None:                              # as soon as the next save's temp file appears: mid-write
            t0 = time.time()
            while not list(d.glob('.last.pt.tmp*')) and time.time() - t0 < 30: time.sleep(0.001)
        else: time.sleep(delay)
        p.kill(); p.wait(30)
        if delay is None: assert list(d.glob('.last.pt.tmp*'))      # the kill did interrupt a write
        done = [int(x) for x in p.stdout.read().split()] + [1]
        with warnings.catch_warnings(): warnings.simplefilter('ignore'); ck = load_checkpoint(d / 'last.pt', fallback=True)
        assert max(done) <= ck['iteration'] + 1 and ck['iteration'] >= max(done) - 1   # at most the save in flight lost
        assert torch.equal(ck['w'], torch.full((4_000_000,), float(ck['iteration'])))
        _remove_stale_temps(d)
        assert not list(d.glob('.*tmp*'))


# ---------------------------------------------------------------- data and config
@pytest.fixture
def fake_root(tmp_path):
    from semivl.data import fake_dataset
    return fake_dataset(tmp_path / 'data', 'custom', n_train=8, n_val=2, size=(24, 32))


def _data_loaders(root, on_error):
    from semivl.data import build_loader, semi_datasets
    ds = semi_datasets(root, '1_4', crop=16, on_error=on_error)
    return [build_loader(ds[k], 2, num_workers=0) for k in ('train_l', 'train_u')], ds


def test_corrupt_image_mid_training_is_named_then_skipped_or_fatal(fake_root, tmp_path):
    from semivl.data import DataError, read_split
    bad = fake_root / read_split(fake_root / 'splits' / '1_4' / 'unlabeled.txt', need_mask=False)[3][0]
    (lx, lu), _ = _data_loaders(fake_root, 'raise')
    bad.write_bytes(bad.read_bytes()[:40])            # truncated JPEG/PNG after the dataset was built
    with pytest.raises(DataError, match=f'cannot read image {bad}'):
        run(tmp_path / 'raise', model=Stub(n=11), lx=lx, lu=lu, epochs=1)
    (lx, lu), _ = _data_loaders(fake_root, 'skip')
    with pytest.warns(UserWarning) as w:
        _, r = run(tmp_path / 'skip', model=Stub(n=11), lx=lx, lu=lu, epochs=1)
    msgs = [str(x.message) for x in w]
    assert any(f'cannot read image {bad}' in m for m in msgs) and any('1 bad data sample(s) were skipped' in m for m in msgs)
    assert r['data_skipped'] == 1 and r['iteration'] == 3
    rows = list(csv.DictReader(open(tmp_path / 'skip' / 'metrics.csv')))
    assert rows[-1]['data/skipped'] == '1'
    with pytest.raises(ConfigError, match=f'data: cannot read image {bad}'):
        validate(data_root=fake_root, split='1_4', check_data=True)


def test_validate_lists_every_problem_before_any_work(fake_root, tmp_path):
    validate(dict(epochs=2), model_cfg=dict(num_classes=11, crop_size=16), data_root=fake_root, split='1_4',
             text=torch.randn(11, 8), out_dir=tmp_path / 'out', check_data=True)      # a good setup passes
    ck = save_checkpoint(tmp_path / 'ck.pt', dict(num_classes=21))
    with pytest.raises(ConfigError) as e:
        validate(dict(lr='fast', bacth_size=4, eval_stride=900, conf_mode='pixelmax'), model_cfg=dict(num_classes=19),
                 data_root=fake_root, split='1_8', text=torch.randn(11, 8), checkpoint=ck)
    msg = str(e.value)
    for part in ["TrainCfg.lr: expected float, got str 'fast'", "no field(s) ['bacth_size']", 'eval_stride 900',
                 "conf_mode 'pixelmax'", "split '1_8' not found", "splits there: ['1_4']",
                 'class counts disagree: model_cfg.num_classes 19, text embeddings 11, checkpoint ck.pt 21, dataset custom 11']:
        assert part in msg, (part, msg)
    assert msg.startswith('invalid configuration (6 problems)'), msg
    with pytest.raises(ConfigError, match='crop 4096 is larger than every sampled training image .*mostly padding'):
        validate(model_cfg=dict(crop_size=4096), data_root=fake_root, split='1_4')
    with pytest.raises(ConfigError, match="method 'fixmatch'"):    # train() checks before any work too
        train(TrainCfg(method='fixmatch'), Stub(), *loaders(), out_dir=tmp_path / 'x')


def test_evaluation_with_too_few_classes_warns_instead_of_a_silent_wrong_miou():
    from semivl.evaluate import evaluate
    img, mask = torch.randn(1, 3, 16, 16), torch.randint(0, 5, (1, 16, 16))       # labels 0..4, the model knows 3
    with pytest.warns(UserWarning, match=r'ground-truth pixels have labels outside 0\.\.2 .*num_classes=3'):
        evaluate(Stub(n=3), [(img, mask)], 3, mode='whole')


def test_a_fresh_run_never_offers_an_older_runs_checkpoint(tmp_path):
    run(tmp_path, epochs=1, ckpt_every=1)                         # an old run: last.pt @4, last.prev.pt @3
    _, r = run(tmp_path, epochs=1, ckpt_every=4, resume=False)    # a fresh run, one save so far
    assert r['iteration'] == 4 and not prev_path(tmp_path / 'last.pt').exists()
    (tmp_path / 'last.pt').write_bytes(b'')                       # its only checkpoint is lost: nothing to fall back on
    with pytest.raises(CheckpointError, match='corrupt or truncated'): load_checkpoint(tmp_path / 'last.pt', fallback=True)


def test_ckpt_minutes_bounds_the_work_a_sigkill_can_lose(tmp_path):
    run(tmp_path / 'epoch', epochs=1)                              # default: one save at the epoch end
    assert not prev_path(tmp_path / 'epoch' / 'last.pt').exists()
    run(tmp_path / 'timed', epochs=1, ckpt_minutes=0.0)            # a save after every iteration
    assert load_checkpoint(prev_path(tmp_path / 'timed' / 'last.pt'))['iteration'] == 3


def test_a_text_file_as_checkpoint_or_clip_weights_gets_one_clear_error(tmp_path):
    "It used to surface as a bare `KeyError: 101` (the file's first byte, 'e')"
    from semivl.clip import read_state_dict
    for i, text in enumerate(['experiment notes, not weights\n', 'e', '{"lr": 0.1}']):   # text fails in many ways
        f = tmp_path/f'notes{i}.pt'; f.write_text(text)
        with pytest.raises(CheckpointError, match='not a torch file|not a file of tensors'): load_checkpoint(f)
        with pytest.raises(ValueError, match='not a torch state dict'): read_state_dict(f)


def test_a_run_where_every_step_is_skipped_fails(tmp_path):
    "Every labeled sample poisoned, fewer steps than max_bad_steps: the run must not end as if it had trained"
    lx, lu = loaders(nan=range(8))
    with pytest.warns(UserWarning, match='update skipped'), pytest.raises(NonFiniteLossError, match='all 4 training steps'):
        run(tmp_path, epochs=1, lx=lx, lu=lu)


def test_an_out_dir_that_is_a_file_gets_one_clear_error(tmp_path):
    "#19: a file where the run folder should be is named, with what to do; the file is left as it was"
    from semivl.checkpoint import prepare_out_dir
    f = tmp_path/'run'; f.write_text('notes')
    with pytest.raises(CheckpointError, match='is a file, not a folder; choose another out_dir'): prepare_out_dir(f, False, False)
    assert f.read_text() == 'notes'


def test_torchscript_clip_weights_are_read_without_running_the_archive(tmp_path, monkeypatch):
    "#19: OpenAI's TorchScript format is read by unpickling its tensors; `torch.jit.load` (which runs code) is never called"
    from semivl.clip import read_state_dict
    m = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(m), tmp_path/'ViT.pt')
    def refuse(*a, **k): raise AssertionError('torch.jit.load ran the archive')
    monkeypatch.setattr(torch.jit, 'load', refuse)
    sd = read_state_dict(tmp_path/'ViT.pt')
    assert sorted(sd) == ['bias', 'weight'] and torch.equal(sd['weight'], m.weight.detach())
