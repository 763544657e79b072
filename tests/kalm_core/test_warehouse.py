import subprocess
import sys
import time

import pytest

from kalm_core import warehouse

HOLD = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def locked(tmp_path):
    path = tmp_path / "w.duckdb"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield path
    proc.kill()
    proc.wait()


def test_a_locked_warehouse_fails_fast_with_a_clear_message(locked):
    for read_only in (False, True):
        t0 = time.monotonic()
        with pytest.raises(warehouse.WarehouseLocked, match=r"locked by another process.*KALM_WAREHOUSE"):
            warehouse.connect(locked, read_only=read_only, wait_s=1.0)
        assert time.monotonic() - t0 < 10


def test_cli_reports_the_lock(locked, monkeypatch, capsys):
    from dagster_project.cli import main

    monkeypatch.setenv("KALM_WAREHOUSE", str(locked))
    assert main(["sql", "select 1"]) == 2
    assert "locked by another process" in capsys.readouterr().err


def test_connect_creates_one_schema_per_layer(tmp_path, monkeypatch):
    monkeypatch.setenv("KALM_WAREHOUSE", str(tmp_path / "x" / "env.duckdb"))
    assert warehouse.warehouse_path() == tmp_path / "x" / "env.duckdb"
    con = warehouse.connect()
    schemas = {s for (s,) in con.execute("select schema_name from information_schema.schemata").fetchall()}
    con.close()
    assert set(warehouse.LAYERS) <= schemas


def test_read_only_on_a_missing_warehouse_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="kalm run"):
        warehouse.connect(tmp_path / "none.duckdb", read_only=True)
