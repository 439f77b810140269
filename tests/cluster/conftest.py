"""A 3-node cluster shared by the tests of a module (tests that kill a node start their own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ..support.backends import Backend
from ..support.cluster import Cluster, start_cluster


@pytest.fixture(scope="module")
def cluster(backend: Backend) -> Iterator[Cluster]:
    with start_cluster(3, redis_url=backend.url, key_prefix=f"t-{uuid.uuid4().hex[:12]}") as running:
        yield running
