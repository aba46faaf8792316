"""Fixtures the API tests share: a real local storage, the fake scheduler, a client with the
default tenant's key (``test_api.make_client``)."""

from __future__ import annotations

import pytest

from genmedia.deployments.store.storage import LocalDirStorage
from tests.unit.deployments.fakes import FakeScheduler


@pytest.fixture
def storage(tmp_path):
    return LocalDirStorage(tmp_path)


@pytest.fixture
def scheduler(storage):
    return FakeScheduler(storage)


@pytest.fixture
def client(scheduler, storage):
    from tests.unit.deployments.api.test_api import make_client

    return make_client(scheduler, storage)
