"""The lake shared between machines: a PostgreSQL catalogue; and sources read over HTTP through httpfs."""

import glob
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from dagster_project.cli import main
from kalm_core import warehouse

ROOT = Path(__file__).resolve().parents[1]
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 and a free port, stopped at the end."""
    if not PG_BIN:
        pytest.skip("PostgreSQL is not installed (Debian package `postgresql`; .ci/run installs it)")
    bin_dir = PG_BIN[-1]
    root = Path(tempfile.mkdtemp(prefix="kalm-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the package's postgres user
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(f"{bin_dir}/initdb", "-D", str(root / "db"), "-U", "kalm", "--auth=trust")
    run(f"{bin_dir}/pg_ctl", "-D", str(root / "db"), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -h 127.0.0.1", "start")
    try:
        for db in ("lake", "dagster"):  # the lake's catalogue and Dagster's history, side by side
            run(f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "kalm", db)
        yield f"postgres:dbname=lake host=127.0.0.1 port={port} user=kalm"
    finally:
        run(f"{bin_dir}/pg_ctl", "-D", str(root / "db"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


READER = """
import sys, time
from kalm_core import warehouse
ok = failed = 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        with warehouse.connect(read_only=True) as con:
            con.execute("select count(*) from lake.snapshots()").fetchall()
        ok += 1
    except Exception as e:
        failed += 1
        print(e, file=sys.stderr)
print(ok, failed)
"""


def test_a_chain_on_a_postgres_catalogue_while_another_process_reads(env, postgres, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KALM_LAKE", postgres)
    monkeypatch.setenv("KALM_LAKE_DATA", str(tmp_path / "shared-data"))
    monkeypatch.setenv("KALM_DATA_DIR", str(tmp_path / "local"))
    with warehouse.connect():  # create the lake, so the reader has something to read from the start
        pass
    reader = subprocess.Popen([sys.executable, "-c", READER, "8"], cwd=ROOT, env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert main(["run", "--select", "key:raw/alpha or key:staged/alpha or key:raw/beta or key:staged/beta"]) == 0
    out, err = reader.communicate(timeout=120)
    ok, failed = map(int, out.split())
    assert ok > 0 and failed == 0, err
    capsys.readouterr()
    assert main(["sql", "select source, count(*) from staged.alpha group by all union all "
                 "select source, count(*) from staged.beta group by all order by 1", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["alpha,2", "beta,2"]
    assert "password" not in warehouse.lake_spec().describe()


def readme_dagster_yaml() -> str:
    """The team's dagster.yaml exactly as the README shows it."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- dagster.yaml for a team: read by tests/test_shared_lake.py -->\n```yaml\n", 1)[1]
    return block.split("```", 1)[0]


def test_dagster_history_in_postgres_beside_the_lake_catalogue_with_the_readmes_config(env, postgres, monkeypatch,
                                                                                          capsys, tmp_path):
    """The README's dagster.yaml for a team: Dagster's runs and events in PostgreSQL (dagster-postgres), the lake's
    catalogue in the same server; a run, then `--stale` reading its versions back from PostgreSQL, then a changed
    source rebuilding its chain alone; kalm leaves the file as written."""
    import dagster as dg
    import yaml

    from dagster_project import runner

    port = postgres.split("port=")[1].split()[0]
    for var, value in {"HOST": "127.0.0.1", "PORT": port, "USER": "kalm", "PASSWORD": "", "DB": "dagster"}.items():
        monkeypatch.setenv(f"KALM_DAGSTER_PG_{var}", value)
    monkeypatch.setenv("KALM_LAKE", postgres)
    monkeypatch.setenv("KALM_LAKE_DATA", str(tmp_path / "shared-data"))
    with warehouse.connect():  # the shared lake, created once
        pass
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = readme_dagster_yaml()
    assert yaml.safe_load(config)["storage"]["postgres"]
    (home / "dagster.yaml").write_text(config)
    chain = "key:raw/alpha or key:staged/alpha or key:raw/beta or key:staged/beta"
    assert main(["run", "--select", chain]) == 0
    inst = runner.instance()
    assert (home / "dagster.yaml").read_text() == config  # a user's file: left as written
    assert type(inst.run_storage).__name__ == "PostgresRunStorage"
    assert type(inst.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(inst.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert [r.status for r in inst.get_runs()] == [dg.DagsterRunStatus.SUCCESS]
    assert inst.get_latest_materialization_event(dg.AssetKey(["staged", "alpha"])) is not None
    assert not list(home.glob("history/runs/*.db"))  # nothing went to the local SQLite files
    capsys.readouterr()
    assert main(["run", "--stale", "--select", chain]) == 0  # the versions read back from PostgreSQL: nothing to do
    assert "nothing is stale" in capsys.readouterr().out.lower()
    with (env["dir"] / "sources" / "a.jsonl").open("a") as f:
        f.write('{"query": "a new question", "pos": ["a new answer"]}\n')
    capsys.readouterr()
    assert main(["run", "--stale", "--select", chain]) == 0
    assert "2 stale asset(s): raw/alpha, staged/alpha" in capsys.readouterr().out
    assert len(inst.get_runs()) == 2


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_an_http_source_is_read_through_httpfs(env, capsys, tmp_path):
    import yaml

    handler = lambda *a, **k: _Quiet(*a, directory=str(env["dir"] / "sources"), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        catalog = {"sources": [{"name": "remote_a", "uri": f"{url}/a.jsonl"},
                               {"name": "remote_b", "uri": f"{url}/b.parquet",
                                "columns": {"query": "question", "positive": "answer", "negatives": "hard"}}]}
        env["catalog"].write_text(yaml.safe_dump(catalog))
        assert main(["run", "--select", "key:raw/remote_a or key:staged/remote_a or key:raw/remote_b or key:staged/remote_b"]) == 0
        capsys.readouterr()
        assert main(["sql", "select (select count(*) from raw.remote_a), (select count(*) from staged.remote_b)",
                     "--csv"]) == 0
        assert capsys.readouterr().out.splitlines()[1] == "5,2"
    finally:
        server.shutdown()
