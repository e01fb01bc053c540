"""The real services of `scripts/services.sh`: PostgreSQL (a fresh database per test) and the two-node Slurm test
cluster. Without a service a test skips with the reason, except under CI (`DAPT_REQUIRE_SERVICES=1`, set by
.ci/run), where a missing service fails."""

from __future__ import annotations

import os
import shutil
import subprocess
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


@pytest.fixture()
def slurm_nodes() -> list[str]:
    """The names of the test cluster's nodes, all idle (``SLURM_CONF`` names its configuration)."""
    if not os.environ.get("SLURM_CONF") or shutil.which("sinfo") is None:
        _missing("the Slurm test cluster is not running (SLURM_CONF is unset, or no `sinfo`)")
    answer = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%N %t"], capture_output=True, text=True, timeout=30
    )
    nodes = dict(line.split() for line in answer.stdout.splitlines())
    if answer.returncode != 0 or len(nodes) < 2 or set(nodes.values()) != {"idle"}:
        _missing(f"the Slurm test cluster does not have two idle nodes (sinfo: {answer.stdout or answer.stderr!r})")
    return sorted(nodes)
