from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.support.databases import Postgres, Redis, run_postgres, run_redis

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    with run_redis() as server:
        yield server


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """A fresh database of the session's cluster."""
    return postgres.create_database(f"t{next(_names)}")


@pytest.fixture
def redis_url(redis_server: Redis) -> str:
    import redis

    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url()
