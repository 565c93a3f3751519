import os

# Under pytest-xdist (scripts/test) the workers share the cores: give each worker's torch and
# BLAS its share of threads instead of every worker assuming the whole machine. Set before
# anything imports numpy: OpenBLAS reads it once, when it loads, and with one thread too
# many per worker its spinning threads burn CPU time that no test uses.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(
        1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from pathlib import Path

import numpy as np
import pytest

from harken.testkit import data
from harken.testkit.files import whine
from tests import prebuilt


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The xdist_group marks, applied. pytest-xdist (3.8) puts a test in its group by setting
    ``item._nodeid`` to ``NODEID@GROUP``, which pytest 9 no longer reads (a node's id is
    ``item._id``): under ``--dist loadgroup`` every group was split between the workers and
    each worker built the file's costly module fixtures again. Done here as xdist does it,
    for either pytest; nothing to do where xdist's own suffix took."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if not names or item.nodeid.endswith("@" + "_".join(names)):
            continue
        grouped = f"{item.nodeid}@{'_'.join(names)}"
        if hasattr(item, "_id"):
            from _pytest.nodeid import NodeId
            item._id = NodeId.parse(grouped)
        else:
            item._nodeid = grouped


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """A folder that every pytest-xdist worker of this run sees (the parent of the workers'
    own temporary folders): the session fixtures below build their data there once for the
    whole run (harken.testkit.data.built_once), not once per worker."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "shared"


@pytest.fixture(scope="session")
def tiny_corpus(shared):
    """The tiny synthetic corpus, written once per test run (a few seconds)."""
    return prebuilt.ready_or_built(prebuilt.TINY, shared / "tiny", data.tiny)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def small_fan(shared):
    """The small synthetic corpus, fan only (90 ten-second training clips): enough windows
    for a classifier to learn something in seconds. About 30 s, once per run."""
    return prebuilt.ready_or_built(prebuilt.SMALL_FAN, shared / "small_fan", data.small_fan)


@pytest.fixture(scope="session")
def fan_with_outliers(small_fan, tiny_corpus, shared):
    """A corpus of the small corpus's fan and the tiny corpus's gearbox and valve (linked,
    not copied): fan training clips with other machine types beside them, for the methods
    that train against other types (OEVAE's outlier exposure)."""
    ready = prebuilt.prebuilt_if_there(prebuilt.FAN_WITH_OUTLIERS)
    if ready:
        return ready
    return data.built_once(shared / "fan_with_outliers",
                           lambda out: data.fan_with_outliers(out, small_fan, tiny_corpus))


@pytest.fixture(scope="session")
def easy_test_set(small_fan, tmp_path_factory):
    """Held-out normal fan clips and 'easy' anomalies made from them: the same clips with a
    steady 1.2 kHz whine 6 dB below the clip. Returns (clips, labels); clip 2i is a normal
    clip and clip 2i + 1 the same clip made anomalous."""
    from harken.agent.sources.wavio import read_wav, write_wav
    from harken.training.data.corpus import Clip, scan
    root = tmp_path_factory.mktemp("easy")
    normals = [c for c in scan(small_fan, ["fan"], "test") if not c.is_anomaly]
    clips, labels = [], []
    for c in normals:
        x, rate = read_wav(c.path)
        path = root / c.name.replace("_normal_", "_anomaly_")
        write_wav(path, whine(x, rate), rate)
        clips += [c, Clip(path, c.machine, c.section, c.domain, "test", "anomaly", c.index,
                          c.attributes)]
        labels += [0, 1]
    return clips, np.array(labels)


@pytest.fixture(scope="session")
def ae_bundle(small_fan, shared):
    """A small AE (3 epochs on the small fan corpus) exported to an int8 bundle (ONNX and
    TFLite): the agent tests' model. About 20 s, once per run."""
    return prebuilt.ready_or_built(prebuilt.AE_BUNDLE, shared / "ae_bundle",
                                   lambda out: data.ae_bundle(small_fan, out))


@pytest.fixture(scope="session")
def general_bundle(shared):
    """A general bundle (spectral-knn's graph, no bank: enrolled on site), float ONNX."""
    return prebuilt.ready_or_built(prebuilt.GENERAL_BUNDLE, shared / "general_bundle",
                                   data.general_bundle)


@pytest.fixture(scope="session")
def generative_bundle(request, shared):
    """``generative_bundle(name)``: the bundle of generative detector ``name`` (aegan-ad,
    gmgan, oevae) trained with harken.testkit.data.GENERATIVE's tiny settings and exported
    to int8 ONNX and TFLite, prebuilt or built once per run (its run is the folder
    ``run`` beside it when built here); skipped, naming why, while the method does not
    export yet or where it can be neither found nor built."""
    def get(name: str) -> Path:
        ready = prebuilt.prebuilt_if_there(prebuilt.generative_part(name))
        if ready:
            return ready
        prebuilt.workstation_or_skip()
        if not data.exportable(name):
            pytest.skip(f"method '{name}' does not export yet (no device graph: issue 42)")
        how = prebuilt.GENERATIVE[name]
        corpus = request.getfixturevalue(
            "fan_with_outliers" if how.corpus == prebuilt.FAN_WITH_OUTLIERS else "small_fan")
        return data.built_once(shared / f"bundle_{name}",
                               lambda out: data.generative_bundle(name, corpus, out))
    return get
