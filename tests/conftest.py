import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """The tiny synthetic corpus, written once per test session (a few seconds)."""
    from training.synth.corpus import synthesize
    return synthesize(tmp_path_factory.mktemp("corpus") / "tiny", "tiny", seed=0, progress=False)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
