"""`kalm sql`'s sandbox: read the lake and nothing else.

DuckDB's own switches do the heavy lifting once the lake is attached read-only: `enable_external_access=false`
with `allowed_directories=[the lake's data path]` refuses file reads and writes elsewhere, ATTACH, INSTALL and
LOAD; `lock_configuration` refuses any later SET; Python replacement scans are off, so a query cannot read the
caller's variables. COPY *into* the data path would still pass those switches, so only read statements run.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import duckdb

from kalm_core import warehouse

READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_SET_VARIABLE = re.compile(r"^\s*set\s+variable\s", re.IGNORECASE)


class ReadOnlyQuery(ValueError):
    """A statement `kalm sql` will not run; the message says which and why."""


def check_statements(sql: str) -> list:
    """The parsed statements of `sql`, or ReadOnlyQuery naming the first one that is not a read."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.ParserException as e:
        raise ReadOnlyQuery(f"the query does not parse: {e}") from None
    for st in statements:
        if st.type in READ_STATEMENTS or (st.type == duckdb.StatementType.SET and _SET_VARIABLE.match(st.query)):
            continue
        first = st.query.strip().split(None, 1)[0].upper() if st.query.strip() else st.type.name
        raise ReadOnlyQuery(f"kalm sql is read-only: {first} statements are refused (only SELECT, EXPLAIN and "
                            f"SET VARIABLE run). Change tables through the pipeline (`kalm run`).")
    return statements


@contextmanager
def open_sandbox(lake: str | None = None, at: int | None = None):
    """A connection that reads the lake (as of snapshot `at`) and cannot touch anything else."""
    spec = warehouse.lake_spec(lake)
    if not warehouse.exists_lake(spec):
        raise FileNotFoundError(f"no lake at {spec.describe()}: run `kalm run` first (or set KALM_LAKE)")
    con = warehouse.new_connection(python_enable_replacements=False)
    try:
        warehouse.attach(con, spec, read_only=True, at=at)
        allowed = [spec.data_path] if "://" not in spec.data_path else []
        con.execute("set allowed_directories = $dirs", {"dirs": [os.path.abspath(d) + "/" for d in allowed]})
        con.execute("set enable_external_access = false")
        con.execute("set lock_configuration = true")
        yield con
    finally:
        con.close()
