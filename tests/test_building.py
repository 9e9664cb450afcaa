"""`systolic.sw.simulate.building`: the fast simulator built in another process (as `systolic
demo` does while it trains) is the one a later `simulate` uses: nothing is left to build."""

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import preset
from systolic.sw import golden
from systolic.sw.simulate import building, simulate

pytestmark = pytest.mark.slow


def test_built_ahead_is_what_simulate_runs(tmp_path, monkeypatch):
    # An empty build cache (which the spawned process inherits), so that a simulate that
    # found nothing built would build, and say so; the 1x4 preset builds fastest.
    monkeypatch.setenv("SYSTOLIC_BUILD_DIR", str(tmp_path))
    cfg = preset("small")
    with building(cfg) as proc:
        pass
    assert proc.exitcode == 0
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, 2)
    said = []
    report = simulate(qnet, images, cfg, jobs=1, progress=said.append)
    assert not [item for item in said if isinstance(item, str) and "building" in item], said
    np.testing.assert_array_equal(report.logits, golden.run(qnet, images).logits)


def test_a_failing_body_stops_the_build():
    with pytest.raises(KeyError), building(preset("default")) as proc:
        raise KeyError("the demo's training failed")
    assert not proc.is_alive()
