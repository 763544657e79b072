import csv
import io
import json
from pathlib import Path

from dagster_project.cli import main, parser
from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def test_sql_csv_sources_and_export(env, capsys, tmp_path):
    assert main(["run", "--select", "+key:marts/training_pairs or +key:marts/eval_pairs"]) == 0  # the data layers
    capsys.readouterr()

    assert main(["sql", "select source, count(*) as n from marts.training_pairs group by source order by source",
                 "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["source", "n"], ["alpha", "2"], ["beta", "2"]]

    assert main(["sql", "select count(*) as n from marts.eval_pairs"]) == 0
    cells = [line.strip("│ ") for line in capsys.readouterr().out.splitlines()]
    assert "n" in cells and "2" in cells  # the box table: a header n and one value row 2

    assert main(["sources"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "eval" in out and "sources/a.jsonl" in out

    out_file = tmp_path / "pairs.jsonl"
    assert main(["export", "--format", "flagembedding", str(out_file)]) == 0
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert len(lines) == 4 and all(len(x["pos"]) == 1 for x in lines)


def test_sql_refuses_writes(env, capsys):
    main(["run", "--select", "key:raw/gamma"])
    capsys.readouterr()
    assert main(["sql", "drop table raw.gamma"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", "select count(*) from raw.gamma", "--csv"]) == 0
    assert capsys.readouterr().out.strip().endswith("2")


def test_help_lists_every_command():
    text = parser().format_help()
    for cmd in ("run", "ui", "sql", "sources", "export"):
        assert cmd in text


PROBES = {
    "copy (select 1) to '{d}/evil.py'": "read-only",
    "copy (select 1) to '{lake}/data/x.csv'": "read-only",  # inside the data path: refused by statement type
    "attach '{d}/new.duckdb' as n": "read-only",
    "select * from read_blob('/proc/self/environ')": "only under the lake's data path",
    "select * from read_text('/etc/hostname')": "only under the lake's data path",
    "install httpfs": "read-only",
    "load httpfs": "read-only",
    "set enable_external_access = true": "read-only",
    "select 1; create table raw.x (i int)": "read-only",
    "select * from PROBES": "PROBES",  # no Python replacement scans: the caller's variables are not tables
}


def test_sql_is_read_only_for_real(env, capsys, tmp_path):
    main(["run", "--select", "key:raw/gamma"])
    capsys.readouterr()
    for probe, reason in PROBES.items():
        sql = probe.format(d=tmp_path, lake=env["lake"])
        assert main(["sql", sql]) == 2, sql
        err = capsys.readouterr().err
        assert err.startswith("kalm: error:") and reason in err, (sql, err)
    assert not (tmp_path / "evil.py").exists() and not (tmp_path / "new.duckdb").exists()
    assert not (env["lake"] / "data" / "x.csv").exists()


def test_sql_at_a_snapshot_csv_line_ends_and_a_closed_pipe(env, capsys, tmp_path):
    import subprocess
    import sys

    assert main(["run", "--select", "key:raw/alpha"]) == 0
    capsys.readouterr()
    assert main(["sql", "select max(snapshot_id) from lake.snapshots()", "--csv"]) == 0
    first = int(capsys.readouterr().out.splitlines()[-1])
    write_jsonl(env["dir"] / "sources" / "a.jsonl", [{"query": "q", "pos": ["p"]}])
    assert main(["run", "--select", "key:raw/alpha"]) == 0
    capsys.readouterr()
    assert main(["sql", "select count(*) from raw.alpha", "--csv", "--at", str(first)]) == 0
    out = capsys.readouterr().out
    assert out == "count_star()\n5\n"  # the old version, with \n line ends
    assert main(["sql", "select count(*) from raw.alpha", "--csv"]) == 0
    assert capsys.readouterr().out.endswith("\n1\n")

    cmd = (f"{sys.executable} -m dagster_project.cli sql \"select range from range(200000)\" --csv | head -2")
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout == "range\n0\n" and "Traceback" not in done.stderr, done.stderr


def test_export_refuses_to_overwrite_without_force(env, capsys, tmp_path):
    assert main(["run", "--select", "*marts/training_pairs"]) == 0
    out = tmp_path / "pairs.jsonl"
    out.write_text("keep me\n")
    assert main(["export", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert main(["export", str(out), "--force"]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    import os

    fifo, link = tmp_path / "pipe", tmp_path / "link.jsonl"
    os.mkfifo(fifo)
    link.symlink_to(out)
    for special in (fifo, link, tmp_path):  # the atomic rename would replace the node or the link itself
        capsys.readouterr()
        assert main(["export", str(special), "--force"]) == 2, special
        assert "regular file" in capsys.readouterr().err
    assert fifo.is_fifo() and link.is_symlink() and len(out.read_text().splitlines()) == 4


def test_the_cli_refuses_what_it_cannot_do_well(env, capsys, tmp_path):
    import shutil

    assert main(["run", "--select", ""]) == 2
    assert "empty --select" in capsys.readouterr().err
    a_file = tmp_path / "somefile"
    a_file.write_text("x")
    assert main(["run", "--select", "key:raw/alpha", "--lake", str(a_file)]) == 2
    assert "a folder, not a file" in capsys.readouterr().err
    assert a_file.read_text() == "x"

    assert main(["run", "--select", "key:raw/alpha", "--lake", str(env["lake"])]) == 0  # --lake set KALM_LAKE
    moved = tmp_path / "moved_lake"
    shutil.copytree(env["lake"], moved)
    shutil.rmtree(env["lake"])  # the copy reads its own data files, not the old folder's
    capsys.readouterr()
    assert main(["sql", "select count(*) from raw.alpha", "--csv", "--lake", str(moved)]) == 0
    assert capsys.readouterr().out.splitlines() == ["count_star()", "5"]

    (env["catalog"].parent / "sources" / "a.jsonl").write_text('[{"query": "q", "pos": ["p"]}]\n')
    assert main(["run", "--select", "key:raw/alpha", "--lake", str(moved)]) == 1
    assert "holds a JSON array, not JSON Lines" in capsys.readouterr().err


HOLDING_READER = """
import sys, time
from kalm_core import warehouse
with warehouse.connect(read_only=True) as con:
    con.execute("begin transaction")
    n = con.execute("select count(*) from raw.gamma").fetchall()[0][0]
    print("reading", n, flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_sql_and_runs_while_others_read_and_write(env, capsys):
    import os
    import subprocess
    import sys

    assert main(["run", "--select", "key:raw/gamma"]) == 0
    reader = subprocess.Popen([sys.executable, "-c", HOLDING_READER, "20"], cwd=ROOT, env=os.environ.copy(),
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().split() == ["reading", "2"]
    # a run while a reader holds a transaction open (what a UI launch meets when a DuckDB shell is open)
    assert main(["run", "--select", "key:raw/alpha or key:staged/alpha"]) == 0
    # two runs at once over the same tables: both finish, one having waited for the other
    cmd = [sys.executable, "-m", "dagster_project.cli", "run", "--select",
           "key:raw/alpha or key:staged/alpha or key:raw/beta or key:staged/beta"]
    child_env = {**os.environ, "KALM_PROFILE": "demo"}  # the tiny profile lives in this process only
    runs = [subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2)]
    outs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    reader.kill()
    capsys.readouterr()
    assert main(["sql", "select count(*) from staged.alpha union all select count(*) from staged.beta union all "
                 "select count(*) from staged.rejects where source = 'alpha'", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["2", "2", "3"]  # nothing written twice, nothing lost


def test_ctrl_c_stops_the_whole_run_and_names_the_interrupted_step(env, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from dataclasses import asdict

    from kalm_core import warehouse
    from tests.conftest import TINY

    profile = tmp_path / "tiny.json"
    profile.write_text(json.dumps(asdict(TINY), default=list))
    run = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "run"], cwd=ROOT,
                           env={**os.environ, "KALM_PROFILE": str(profile)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in run.stdout:  # the first finished step: the run is in the middle of its plan
        if " ok " in line:
            break
    os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group, Dagster's helpers too
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, out[-2000:] + err[-2000:]
    assert "kalm run: interrupted (Ctrl-C) during step" in err and "Traceback" not in err
    with warehouse.connect(read_only=True) as con:
        assert not warehouse.exists(con, "training", "candidate")  # nothing after the interrupt ran
        in_lake = {f"{s}.{t}" for s, t in con.execute(
            "select schema_name, table_name from duckdb_tables() where database_name = 'lake'").fetchall()}
    # the summary names every table the run committed (a fresh lake: every table in it), an interrupted step's too
    listed = {line.split()[0] for line in out.splitlines() if line.endswith(")") and "(snapshot " in line}
    assert listed == in_lake and f"{len(in_lake)} table(s) committed" in out


def test_sql_session_from_stdin_sees_each_commit_and_outlives_a_refused_query(tmp_path):
    """`kalm sql -` attaches the lake once and answers queries from stdin, each from the last committed snapshot."""
    import os
    import subprocess
    import sys

    from kalm_core import warehouse

    lake = tmp_path / "lake"
    with warehouse.connect(lake) as con:
        con.execute("create table raw.t as select 1 as x")
    session = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "sql", "-", "--csv"], cwd=ROOT,
                               env={**os.environ, "KALM_LAKE": str(lake)}, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def ask(sql: str) -> list[str]:
        session.stdin.write(sql + "\n")
        session.stdin.flush()
        lines = []
        while (line := session.stdout.readline()) not in ("\n", ""):
            lines.append(line.rstrip("\n"))
        return lines

    try:
        assert ask("select count(*) as n from raw.t;") == ["n", "1"]
        with warehouse.connect(lake) as con:  # another writer commits while the session stays attached
            con.execute("insert into raw.t values (2), (3)")
        assert ask("select count(*) as n\nfrom raw.t;") == ["n", "3"]  # a query may span lines
        assert ask(f"copy raw.t to '{tmp_path / 'x.csv'}';") == []  # refused, and the session goes on
        assert ask("select sum(x) as s from raw.t;") == ["s", "6"]
        session.stdin.close()
        assert session.wait(timeout=60) == 1  # one query failed
        assert "COPY statements are refused" in session.stderr.read() and not (tmp_path / "x.csv").exists()
    finally:
        session.kill()


def test_kalm_ui_gives_its_runs_the_settings_kalm_run_uses(env, monkeypatch):
    """`kalm ui --offline` starts `dg dev` (whose runs are other processes) with the environment `kalm run
    --offline` sets for itself."""
    import os
    import subprocess

    from dagster_project import cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: seen.update(cmd=cmd, env=env) or 0)
    assert main(["ui", "--offline", "--port", "3999"]) == 0
    assert seen["cmd"][1:4] == ["-m", "dagster_dg_cli.cli", "dev"] and "3999" in seen["cmd"]
    assert seen["env"]["KALM_UI_PORT"] == "3999" and "KALM_UI_PORT" not in os.environ  # its processes only
    assert {k: seen["env"].get(k) for k in {**cli.OFFLINE_ENV, **cli.QUIET_ENV}} == {**cli.OFFLINE_ENV, **cli.QUIET_ENV}
    assert seen["env"]["DAGSTER_HOME"] == os.environ["DAGSTER_HOME"]  # the history of `kalm run`


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (from /proc)."""
    import os

    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


def _run_in_background(env, tmp_path, profile, *argv):
    import os
    import subprocess
    import sys
    from dataclasses import asdict

    path = tmp_path / "profile.json"
    path.write_text(json.dumps(asdict(profile), default=list))
    return subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "run", *argv], cwd=ROOT,
                            env={**os.environ, "KALM_PROFILE": str(path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_ctrl_c_during_training_stops_torchrun_and_its_workers(env, tmp_path):
    """Stopping a run (Ctrl-C here; a UI cancel reaches the step the same way) reaches the trainer through
    Dagster Pipes and torchrun: no worker outlives the run."""
    import signal
    import time
    from dataclasses import replace

    from tests.conftest import TINY

    assert main(["run", "--select", "+key:batched/batches"]) == 0
    long = replace(TINY, train=replace(TINY.train, nproc=2, max_steps=None, epochs=100_000))
    run = _run_in_background(env, tmp_path, long, "--select", "key:training/candidate")
    models = str(env["dir"] / "data" / "models")
    seen = []
    for line in run.stdout:  # the trainer is stepping: torchrun and its two workers are up
        seen.append(line)
        if "step 1/" in line:
            break
    assert len(_processes_mentioning(models)) >= 3, "".join(seen)[-3000:] + (run.stderr.read() if run.poll() else "")
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in err and "trainer rank 0: cancelled" in err and "torchrun: cancelled" in err, err[-3000:]
    deadline = time.monotonic() + 60
    while _processes_mentioning(models) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(models) == []


def test_a_run_whose_process_was_killed_is_marked_failed(env, tmp_path):
    import signal

    import dagster as dg

    from dagster_project import runner
    from tests.conftest import TINY

    run = _run_in_background(env, tmp_path, TINY)
    for line in run.stdout:  # mid-run
        if " ok " in line:
            break
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    inst = runner.instance()
    started = inst.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert len(started) == 1 and started[0].tags[runner.PID_TAG] == str(run.pid)
    assert runner.fail_dead_runs(inst) == [started[0].run_id]
    assert inst.get_run_by_id(started[0].run_id).status == dg.DagsterRunStatus.FAILURE
    messages = [e.dagster_event.message or "" for e in inst.all_logs(started[0].run_id) if e.dagster_event]
    assert any(f"pid {run.pid}" in m and "died" in m for m in messages)
    assert runner.fail_dead_runs(inst) == []  # a live or finished run is never touched


def test_a_language_model_filter_is_refused_before_any_step(env, capsys, tmp_path, tiny_qwen2_dir):
    from dataclasses import asdict, replace

    from kalm_core.filter_model import ALLOW_LM_ENV
    from tests.conftest import TINY

    lm = tmp_path / "lm-filter.json"
    lm.write_text(json.dumps(asdict(replace(TINY, filter=replace(TINY.filter, model=str(tiny_qwen2_dir))))))
    assert main(["run", "--select", "+key:filtered/alpha", "--profile", str(lm)]) == 2
    err = capsys.readouterr().err
    assert "is not an embedding model" in err and "--allow-lm-filter" in err
    assert not env["lake"].exists()  # refused before any step: not even the raw table was written
    try:
        assert main(["run", "--select", "+key:filtered/alpha", "--profile", str(lm), "--allow-lm-filter"]) == 0
        capsys.readouterr()
        assert main(["sql", "select count(*) from filtered.alpha", "--csv"]) == 0
        assert int(capsys.readouterr().out.splitlines()[-1]) > 0
    finally:
        import os

        os.environ.pop(ALLOW_LM_ENV, None)
