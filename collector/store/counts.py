"""How many rows the growing tables hold, read from the counters the database keeps.

Triggers (migration 0008) add to `row_counts` on every insert and delete of the growing
tables and on every outcome change of a transaction, so a count is a sum over a few rows,
whatever the tables hold: `/metrics` and `collector status` no longer count millions of
rows at each call (3.2 s per scrape at 10 million transactions before).

On PostgreSQL each connection adds to its own shard (its backend pid); `fold` moves the
shards of connections that have ended into shard 0, so the table stays about as small as
the number of open connections. Folding changes no sum: it only keeps the read cheap.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select, text

from collector.schema import presence, row_counts

# PostgreSQL: the shards of backends that are gone, summed into shard 0 in one statement
# (a concurrent fold waits on the rows it deletes, then finds them gone).
_FOLD = text(
    """
    WITH gone AS (
        DELETE FROM row_counts
        WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
        RETURNING name, n
    )
    INSERT INTO row_counts (name, shard, n)
    SELECT name, 0, sum(n) FROM gone GROUP BY name ORDER BY name
    ON CONFLICT (name, shard) DO UPDATE SET n = row_counts.n + EXCLUDED.n
    """
)


class RowCounts:
    """The counters of one database."""

    def __init__(self, writes: Engine, reads: Engine) -> None:
        self._writes = writes
        self._reads = reads

    def read(self) -> dict[str, int]:
        """Rows per counted table, transactions per outcome (`outcome.<OUTCOME>`), and the
        agents' presence rows (one per agent: counted directly)."""
        key = row_counts.c
        with self._reads.connect() as conn:
            found = {
                name: int(total)
                for name, total in conn.execute(
                    select(key.name, func.sum(key.n)).group_by(key.name).order_by(key.name)
                )
            }
            found[presence.name] = conn.execute(
                select(func.count()).select_from(presence)
            ).scalar_one()
        return found

    def fold(self) -> int:
        """Fold the shards of ended PostgreSQL connections into shard 0; how many rows
        that removed (always 0 on SQLite, which has only shard 0)."""
        if self._writes.dialect.name != "postgresql":
            return 0
        with self._writes.begin() as conn:
            before = conn.execute(select(func.count()).select_from(row_counts)).scalar_one()
            conn.execute(_FOLD)
            after = conn.execute(select(func.count()).select_from(row_counts)).scalar_one()
        return int(before - after)
