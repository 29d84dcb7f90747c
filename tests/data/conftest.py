"""Fixtures for the data tests: the shared data folder (``shared_dir``) and
everything in it loaded once (``shared``); both skip when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from moerm.data.loaders import missing_shared_files, shared_data_dir


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared data not found: set $MOERM_DATA_DIR or put it in <repo>/../shared/data")
    missing = missing_shared_files(path)
    if missing:
        pytest.skip(f"shared data in {path} lacks {', '.join(missing)}")
    return path


@pytest.fixture(scope="session")
def shared(shared_dir):
    from moerm.data.splits import load_shared

    return load_shared(shared_dir)
