"""Router assembly pieces that need no servers: Thompson's prior from an offline router file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moerm.routing.pool import build_pool
from moerm.routing.prior import OfflineRouter
from router_svc.app import thompson_prior
from tests.routing.test_pool import manifest


def test_prior_rows_follow_the_pool_order(tmp_path: Path) -> None:
    pool = build_pool(manifest(trained=("code",)), externals={"ext": "h:1"})
    weights = np.arange(12, dtype=np.float64).reshape(3, 4)
    path = OfflineRouter(weights, ("ext", "dmoerm:code", "retired-rm")).save(tmp_path / "prior.safetensors")
    prior = thompson_prior(str(path), pool, dim=4)
    mu0 = OfflineRouter.load(path).prior_mean()  # the offline router's own prior, rows in its arm order
    assert pool.names == ("dmoerm:code", "dmoerm:writing", "base:code", "ext")
    np.testing.assert_array_equal(prior[0], mu0[1])  # dmoerm:code
    np.testing.assert_array_equal(prior[3], mu0[0])  # ext
    assert np.abs(prior[[0, 3]]).sum() > 0
    np.testing.assert_array_equal(prior[[1, 2]], 0.0)  # arms the offline router never saw
    assert thompson_prior("", pool, dim=4) is None


def test_prior_of_another_dimension_is_refused(tmp_path: Path) -> None:
    pool = build_pool(manifest())
    path = OfflineRouter(np.zeros((2, 3)), ("dmoerm:code", "dmoerm:writing")).save(tmp_path / "p.safetensors")
    with pytest.raises(SystemExit, match="3 dims"):
        thompson_prior(str(path), pool, dim=4)
