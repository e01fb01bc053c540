"""The real services of `scripts/services.sh` (PostgreSQL): a fresh database per test. Without the service a test
skips with the reason, except under CI (`DAPT_REQUIRE_SERVICES=1`, set by .ci/run), where a missing service fails."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.services


def _missing(what: str) -> None:
    message = f"{what}: start it with `make services` (root), or run `make test-distributed`"
    if os.environ.get("DAPT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{message} (CI requires every service test to run)")
    pytest.skip(message)


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """An SQLAlchemy URL of a new, empty database on the test PostgreSQL server (dropped afterwards)."""
    server = os.environ.get("DAPT_TEST_POSTGRES")
    if not server:
        _missing("PostgreSQL is not running (DAPT_TEST_POSTGRES is unset)")
    import psycopg2

    dsn = server.replace("postgresql+psycopg2://", "postgresql://")
    try:
        admin = psycopg2.connect(dsn, connect_timeout=5)
    except psycopg2.OperationalError as error:
        _missing(f"PostgreSQL at {server} does not answer ({' '.join(str(error).split())})")
    admin.autocommit = True
    name = f"dapt_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
