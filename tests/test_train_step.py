"""One full SemiVL iteration against the official code (golden `train_step_exp40_crop128`, README §5).

The reference: exp-40 config with crop 128 and batch 2, backbone img_size 128 (pos-embed 14→8 at load),
clip_encoder img_size 512 (32→8 at forward), random CLIP weights from `recipe.py`, VLG head weights from
`vlg_head_params.npz` with `head.weight`/`head.bias` ×100, fixed FP keep masks.
"""
import importlib.util
import types

import numpy as np
import pytest
import torch

from semivl.train import train_step
from semivl.optim import build_optimizer
from semivl.train_config import TrainCfg

GOLDEN = __import__('pathlib').Path(__file__).parent / 'golden'
LOSSES = ['loss_x', 'loss_s1', 'loss_s2', 'loss_fp', 'loss_guidance_s1', 'loss_guidance_s2', 'loss_guidance_fp', 'loss']
PREDS = ['pred_w_other', 'pred_x', 'pred_w', 'pred_w_fp', 'pred_s1', 'pred_s2']
LABELS = ['mask_w_other', 'mask_w', 'mask_w_mixed1', 'mask_w_mixed2', 'ignore_mask_mixed1', 'ignore_mask_mixed2',
          'guidance', 'guidance_other', 'guidance_mixed1', 'guidance_mixed2']
# the reference's names of the guidance outputs (the official code: loss_mc_*, mclip*, current_mcc_lambda)
OFFICIAL = {'loss_guidance_s1': 'loss_mc_s1', 'loss_guidance_s2': 'loss_mc_s2', 'loss_guidance_fp': 'loss_mc_fp',
            'guidance': 'mclip', 'guidance_other': 'mclip_other', 'guidance_mixed1': 'mclip_mixed1',
            'guidance_mixed2': 'mclip_mixed2', 'guidance_lambda': 'current_mcc_lambda'}
ref = lambda g, k: g[OFFICIAL.get(k, k)]
CONFS = ['conf_w_other', 'conf_w', 'conf_w_mixed1', 'conf_w_mixed2']


def official_name(ours: str) -> str:
    "Our parameter name -> the reference's (mmseg) name"
    if ours == 'backbone.visual.positional_embedding': return 'backbone.pos_embed'
    if ours.startswith('backbone.visual.transformer.resblocks.'):
        i, rest = ours[len('backbone.visual.transformer.resblocks.'):].split('.', 1)
        assert rest.startswith('attn.'), ours
        return f'backbone.layers.{i}.attn.{rest}'
    assert ours.startswith('decode_head.'), ours
    return ours


def _recipe():
    spec = importlib.util.spec_from_file_location('golden_recipe', GOLDEN / 'recipe.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def step(golden):
    "Build the reference model, run one step with backward and one AdamW step (shared by all tests here)"
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from semivl.segmentor import ModelCfg, SemiVLSegmentor
    g = golden('train_step_exp40_crop128')
    f32 = lambda k: torch.from_numpy(g[k].astype(np.float32))
    i64 = lambda k: torch.from_numpy(g[k].astype(np.int64))
    torch.manual_seed(0)
    vis = _build_vision_tower(512, CLIPVisionCfg(layers=12, width=768, patch_size=16, image_size=224))
    vis.load_state_dict({k.removeprefix('visual.'): torch.from_numpy(v)
                         for k, v in _recipe().openai_visual_state_dict().items()})
    c2c = torch.from_numpy(golden('vlg_head_concept')['concept_to_class'])
    model = SemiVLSegmentor(ModelCfg.preset('voc').update(crop_size=128), types.SimpleNamespace(visual=vis),
                            f32('text_single'), f32('text_concept4'), c2c)
    head = {k: torch.from_numpy(v.astype(np.float32)) for k, v in golden('vlg_head_params').items()}
    head['head.weight'] *= float(g['head_logit_scale'][0]); head['head.bias'] *= float(g['head_logit_scale'][0])
    model.decode_head.load_state_dict(head)
    cfg = TrainCfg.preset('voc').update(total_iters=1000)
    opt, sched = build_optimizer(model, cfg)
    out = train_step(model, (f32('img_x'), i64('mask_x')),
                     (f32('img_w'), f32('img_s1'), f32('img_s2'), i64('ignore_mask'), i64('mix1'), i64('mix2')),
                     (f32('img_w_other'), f32('img_s1_other'), f32('img_s2_other'), i64('ignore_mask_other')),
                     it=0, cfg=cfg, fp_keep_masks=[torch.from_numpy(g[f'fp_keep_mask{i}']).float() for i in range(3)],
                     return_outputs=True)
    opt.zero_grad(); out['loss'].backward()
    params = {official_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    lr_used = {official_name(n): gr['lr'] for gr in opt.param_groups for n in gr['names']}
    opt.step(); sched.step()
    return dict(g=g, out=out, model=model, opt=opt, params=params, grads=grads, lr_used=lr_used, cfg=cfg)


def test_losses(step):
    g, out = step['g'], step['out']
    for k in LOSSES:
        np.testing.assert_allclose(out[k].item(), ref(g, k)[0], rtol=1e-3, err_msg=k)
    assert out['guidance_lambda'].item() == ref(g, 'guidance_lambda')[0]


def test_cutmixed_images(step):
    g, out = step['g'], step['out']
    for k in ('img_s1_mixed', 'img_s2_mixed'):
        np.testing.assert_array_equal(out[k].numpy(), g[k].astype(np.float32))


def test_predictions(step):
    g, out = step['g'], step['out']
    for k in PREDS:
        np.testing.assert_allclose(out[k][:, :, ::2, ::2].numpy(), g[f'{k}_stride2'], atol=5e-3, err_msg=k)
        np.testing.assert_allclose(out[k].double().sum().item(), g[f'{k}_sum'][0], rtol=1e-5, err_msg=k)


def test_pseudo_labels_and_confidences(step):
    g, out = step['g'], step['out']
    for k in LABELS:
        assert (out[k].numpy() != ref(g, k)).mean() < 1e-3, k          # ties / pixels at the threshold only
    for k in CONFS:
        np.testing.assert_allclose(out[k].numpy(), g[k], atol=1e-3, err_msg=k)
    assert (g['conf_w'] >= 0.95).any() and (ref(g, 'guidance') != 255).any()   # both thresholds really bite


def test_gradient_norms(step):
    g, grads = step['g'], step['grads']
    names = list(g['grad_norm_names'])
    assert sorted(names) == sorted(grads), "exactly the reference's parameters receive gradients"
    for n, ref in zip(names, g['grad_norm_values']):
        got = grads[n].double().norm().item()
        if n == 'decode_head.head.bias':   # analytically 0 (softmax-CE summed over the shared 1-channel head): noise
            assert abs(got) < 1e-5 and abs(ref) < 1e-5
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-3, err_msg=n)
    for k in g:
        if k.startswith('grad__') and k != 'grad__decode_head__head__bias':
            n = k[len('grad__'):].replace('__', '.')
            np.testing.assert_allclose(grads[n].reshape(g[k].shape).numpy(), g[k], rtol=1e-3,
                                       atol=1e-3 * np.abs(g[k]).max(), err_msg=n)


def test_values_after_first_adamw_step(step):
    g, params = step['g'], step['params']
    for k in g:
        if k.startswith('after_step__'):
            n = k[len('after_step__'):].replace('__', '.')
            got = params[n].detach().reshape(g[k].shape).numpy()
            # the first AdamW step moves every element by ≈ lr (sign of the gradient): compare the moves
            np.testing.assert_allclose(got, g[k], rtol=0, atol=2e-3 * step['lr_used'][n], err_msg=n) \
                if n != 'decode_head.head.bias' else np.testing.assert_allclose(got, g[k], atol=2.1 * step['lr_used'][n])


def test_optimizer_groups(step):
    g, lr_used, opt = step['g'], step['lr_used'], step['opt']
    ref = dict(zip(g['optimizer_group_param_names'], g['optimizer_group_lr_wd']))
    trainable = set(g['trainable_backbone_params']) | {n for n in ref if n.startswith('decode_head.')}
    assert set(lr_used) == trainable                            # frozen params are not in our optimiser
    wd = {official_name(n): gr['weight_decay'] for gr in opt.param_groups for n in gr['names']}
    for n in trainable:
        np.testing.assert_allclose([lr_used[n], wd[n]], ref[n], rtol=1e-12, err_msg=n)
    assert not any(p.requires_grad for p in step['model'].clip_encoder.parameters())
