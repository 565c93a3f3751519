import numpy as np
import pytest
import torch
from harken.training.methods import make_method
VARIANTS = {
            "e12": ["epochs=12", "windows_per_epoch=512", "width=0.35"]}
@pytest.mark.parametrize("v", sorted(VARIANTS))
def test_c(v, small_fan, easy_test_set, tmp_path):
    from harken.training.data.corpus import scan
    clips, _ = easy_test_set
    m = make_method("contrastive", VARIANTS[v])
    m.train(scan(small_fan, ["fan"], "train"), tmp_path / "fan", progress=False)
    from harken.training.methods import METHODS
    s = METHODS["contrastive"].load(tmp_path / "fan").score(clips, progress=False)
    wins = int(np.sum(s[1::2] > s[0::2]))
    print(f"\nRESULT {v} threads={torch.get_num_threads()} wins={wins}/{len(s)//2}")
