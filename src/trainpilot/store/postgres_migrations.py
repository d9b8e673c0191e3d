"""The PostgreSQL schema, versioned: numbered SQL files applied by `trainpilot migrate`, checked at open.

``migrations/postgres/0001_initial.sql``, ``0002_....sql``: each file is one version; the missing ones are
applied in order, all in one transaction, and recorded in ``schema_version``. Two replicas running
`trainpilot migrate` at once queue on an advisory lock (keyed by the schema), so each version is applied
once. The store never migrates by itself: `PostgresStore.open()` refuses a schema that is behind (or
ahead of) this code, naming the command that fixes it (docs/architecture.md says why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from trainpilot.exceptions import ConfigError, StoreUnavailable
from trainpilot.extras import extra
from trainpilot.store import redact_url

with extra("postgres", "the postgres store"):
    import psycopg
    from psycopg import AsyncConnection

FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
LOCK = "SELECT pg_advisory_xact_lock(hashtext('trainpilot.migrate.' || coalesce(current_schema(), '')))"
VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version(
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this code, in version order; versions run 1, 2, 3... with no gap."""
    found = []
    for entry in files("trainpilot.store").joinpath("migrations", "postgres").iterdir():
        match = FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration files must be numbered 0001, 0002, ... with no gap: {found}")
    return found


def latest_version() -> int:
    return len(migrations())


async def current_version(conn: AsyncConnection[Any]) -> int:
    """The version the database's schema is at; 0 for a schema trainpilot never touched."""
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: AsyncConnection[Any]) -> list[Migration]:
    """Apply what is missing, all or nothing; return what was applied (empty when up to date)."""
    async with conn.transaction():
        await conn.execute(LOCK)
        await conn.execute(VERSION_TABLE)
        have = await current_version(conn)
        _refuse_newer(have)
        todo = [m for m in migrations() if m.version > have]
        for m in todo:
            await conn.execute(m.sql.encode())
            await conn.execute(
                "INSERT INTO schema_version(version, name) VALUES (%s, %s)", (m.version, m.name)
            )
    return todo


async def migrate_url(url: str) -> tuple[list[Migration], int]:
    """`trainpilot migrate`: what it applied to the database at `url`, and the version it is at now."""
    try:
        async with await AsyncConnection.connect(url, autocommit=True) as conn:
            return await migrate(conn), await current_version(conn)
    except psycopg.OperationalError as exc:
        raise cannot_reach(url, exc) from None


def cannot_reach(url: str, exc: Exception) -> StoreUnavailable:
    """libpq's reason on one line (it spreads hints over several), without the password."""
    return StoreUnavailable(f"cannot reach PostgreSQL at {redact_url(url)}: {' '.join(str(exc).split())}")


async def check(conn: AsyncConnection[Any], where: str) -> None:
    """Refuse, with the fix, a schema this code cannot use: `ConfigError` naming `trainpilot migrate`."""
    have = await current_version(conn)
    _refuse_newer(have)
    want = latest_version()
    if have < want:
        state = "has no trainpilot schema" if have == 0 else f"has schema version {have}"
        raise ConfigError(
            f"the PostgreSQL database at {where} {state}; this trainpilot needs version {want}. "
            f"Run `trainpilot migrate --store URL` (the same URL) first."
        )


def _refuse_newer(have: int) -> None:
    if have > latest_version():
        raise ConfigError(
            f"the PostgreSQL schema is at version {have}, newer than this trainpilot knows "
            f"({latest_version()}): upgrade trainpilot to use this database"
        )
