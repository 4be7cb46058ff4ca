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
    "Counts and the quirks of the official prompt names (spec §4.3, §11.22)"
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
