"""Class lists and concept aggregation against the official goldens."""
import numpy as np
import torch

from semivl.text import aggregate_concepts, flatten_concepts, load_class_info


def test_concept_maps_match_official(golden):
    "The shipped VOC concept4 / Cityscapes concept3 lists flatten to the official concept -> class maps"
    g = golden('small_aggregate_concepts')
    for ds, key in (('voc', 'voc_concept4'), ('cityscapes', 'cs_concept3')):
        _, c2c = flatten_concepts(load_class_info(ds)['concepts'])
        np.testing.assert_array_equal(c2c.numpy(), g[f'{key}_concept_to_class'])


def test_aggregate_concepts_golden(golden):
    g = golden('small_aggregate_concepts')
    for key, n in (('voc_concept4', 21), ('cs_concept3', 19)):
        out = aggregate_concepts(torch.from_numpy(g[f'{key}_pred']), torch.from_numpy(g[f'{key}_concept_to_class']))
        assert out.shape[1] == n
        np.testing.assert_array_equal(out.numpy(), g[f'{key}_agg'])  # a max: exact


def test_class_lists_official():
    "Counts and the quirks of the official prompt names (as in the released .npy files)"
    voc, coco, ade, cs = (load_class_info(n) for n in ('voc', 'coco', 'ade', 'cityscapes'))
    assert len(voc['classes']) == 21 and voc['classes'][-1] == 'tvmonitor' and voc['classes'][16] == 'pottedplant'
    assert [len(c) for c in voc['concepts']] == [45, 3, 3, 1, 4, 4, 2, 4, 2, 3, 1, 2, 2, 4, 4, 4, 3, 1, 1, 2, 3]
    assert voc['concepts'][11] == ['dining table', 'table for eating at']
    assert len(coco['classes']) == 81 and coco['classes'][:2] == ['background', 'person']
    assert coco['classes'][-1] == 'toothbrush'
    assert len(ade['classes']) == 150 and ade['classes'][7] == 'bed ' and ade['classes'][-2:] == ['clock', 'flag']
    assert len(set(ade['classes'])) == 150
    assert len(cs['classes']) == 19 and [len(c) for c in cs['concepts']] == [3, 1, 7, 1, 2, 3, 1, 3, 3, 4, 1, 7, 3, 4, 4, 1, 2, 3, 1]
    assert cs['concepts'][2][1] == 'skyscaper'
    for info in (voc, coco, ade, cs): assert info['ignore_index'] == 255


def test_dataset_text_with_real_tokenizer(tmp_path, monkeypatch):
    "open_clip's BPE tokenizer (bundled, no network) + a small CLIP with its vocabulary: VOC text plan shapes, cache"
    import open_clip
    from semivl.clip import load_clip
    from semivl.text import dataset_text
    monkeypatch.setenv('SEMIVL_CACHE', str(tmp_path))
    cfg = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
               text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    torch.manual_seed(0)
    clip, tok = load_clip(cfg, tokenizer=open_clip.get_tokenizer('ViT-B-16'))
    t = dataset_text('voc', clip, tok)
    assert t['text'].shape == (21, 32) and t['guidance_text'].shape == (98, 32) and t['concept_to_class'].shape == (98,)
    torch.testing.assert_close(t['text'].norm(dim=-1), torch.ones(21))
    assert len(list((tmp_path/'text').glob('voc_*.pt'))) == 2
    cs = dataset_text('cityscapes', clip, tok)   # decoder: concept average (19 rows); guidance: 54 concepts
    assert cs['text'].shape == (19, 32) and cs['guidance_text'].shape == (54, 32)
    ade = dataset_text('ade', clip, tok)
    assert ade['guidance_text'] is ade['text'] and ade['concept_to_class'] is None
