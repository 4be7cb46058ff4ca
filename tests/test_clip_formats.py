"""Real CLIP weights in every common local form load to the same model, with the activation they were trained with.

The weights are the golden recipe's random ViT-B/16 image tower (plus open_clip's seeded text tower), built as
`ViT-B-16-quickgelu` (QuickGELU, like OpenAI's release) and saved as: OpenAI's TorchScript archive, OpenAI's state
dict, open_clip's `.bin` and `.safetensors` (in the Hugging Face cache layout open_clip downloads to), and an
open_clip `local-dir` folder. Each must give the reference image and text features."""
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from semivl.clip import load_clip, run_clip
from test_clip import _recipe

pytestmark = pytest.mark.slow
OPENAI_EXTRAS = dict(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))


def _activations(clip) -> set:
    return {type(b.mlp.gelu).__name__ for t in (clip.visual.transformer, clip.transformer) for b in t.resblocks}


@torch.no_grad()
def _features(clip, tok):
    img = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return clip.encode_image(img), clip.encode_text(tok(['a photo of a cat.', 'a striped red object.']))


@pytest.fixture(scope='module')
def reference():
    "The QuickGELU model, its state dict and its features"
    sd = {k: torch.from_numpy(v) for k, v in _recipe().openai_visual_state_dict().items()}
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match='missing'):
        clip, tok = load_clip('ViT-B-16-quickgelu', weights=sd, strict=False, verbose=False)
    assert _activations(clip) == {'QuickGELU'}
    return clip, clip.state_dict(), _features(clip, tok)


@pytest.fixture(scope='module')
def saved(reference, tmp_path_factory):
    "The reference weights in each format: {format: (path, architecture name to pass)}"
    clip, sd, _ = reference
    d = tmp_path_factory.mktemp('clip_formats')
    out = {}
    # an archive in OpenAI's layout: open_clip keeps OpenAI's names; OpenAI's model also holds `input_resolution`
    clip.register_buffer('input_resolution', OPENAI_EXTRAS['input_resolution'])
    try: torch.jit.save(torch.jit.script(clip), d/'ViT-B-16.pt')
    finally: delattr(clip, 'input_resolution')
    out['openai_jit'] = (d/'ViT-B-16.pt', 'ViT-B-16')
    torch.save({**sd, **OPENAI_EXTRAS}, d/'ViT-B-16-state-dict.pt')
    out['openai_state_dict'] = (d/'ViT-B-16-state-dict.pt', 'ViT-B-16')
    torch.save(sd, d/'open_clip_pytorch_model.bin')
    out['open_clip_bin_quickgelu_name'] = (d/'open_clip_pytorch_model.bin', 'ViT-B-16-quickgelu')
    hub = d/'hub'/'models--timm--vit_base_patch16_clip_224.openai'/'snapshots'/'abc123'
    hub.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, hub/'open_clip_model.safetensors')
    out['open_clip_safetensors_hf_cache'] = (hub/'open_clip_model.safetensors', 'ViT-B-16')
    folder = d/'local-dir'; folder.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, folder/'open_clip_model.safetensors')
    (folder/'open_clip_config.json').write_text(json.dumps(dict(model_cfg=open_clip.get_model_config('ViT-B-16-quickgelu'),
                                                                preprocess_cfg={})))
    out['open_clip_local_dir'] = (folder, 'ViT-B-16')
    return out


@pytest.mark.parametrize('fmt', ['openai_jit', 'openai_state_dict', 'open_clip_bin_quickgelu_name',
                                 'open_clip_safetensors_hf_cache', 'open_clip_local_dir'])
def test_every_format_loads_quickgelu_weights_identically(fmt, reference, saved, capsys):
    _, sd, (ref_img, ref_txt) = reference
    path, arch = saved[fmt]
    clip, tok = run_clip(path, arch)
    assert 'QuickGELU' in capsys.readouterr().out  # the choice is printed
    assert _activations(clip) == {'QuickGELU'}, fmt
    img, txt = _features(clip, tok)
    torch.testing.assert_close(img, ref_img, rtol=0, atol=1e-5)
    torch.testing.assert_close(txt, ref_txt, rtol=0, atol=1e-5)


def test_gelu_on_quickgelu_weights_changes_the_embeddings(reference, saved):
    "The control: the same open_clip file under a plain name, with nothing to say how it was trained, gets GELU"
    _, _, (ref_img, ref_txt) = reference
    clip, tok = load_clip('ViT-B-16', saved['open_clip_bin_quickgelu_name'][0])
    assert _activations(clip) == {'GELU'}
    img, txt = _features(clip, tok)
    assert (txt - ref_txt).abs().max() > 1e-3 and (img - ref_img).abs().max() > 1e-3
