"""Benchmark partial rebuilds: one changed source (file, catalogue entry) or one filter number against a full rebuild
of the data layers, and exactly which assets each change rebuilt.

    .venv/bin/python benchmarks/bench_rebuild.py [--sources 10] [--pairs 200] [--repeats 5]

A temporary project with N file sources of real docstring pairs (plus one held-out source) is built once through the
batched layer with the demo profile, batches grouped by task type (given as a JSON profile file, so one number can
change). Then it times, over the data layers (raw, staged, filtered, marts, batched; no training):
1. the full rebuild: every data-layer asset re-materialised, incremental SQL models built whole (`kalm run
   --full-refresh --select` of them all), the anchor; alternated with
2. one source's file edited (ten pairs removed) and rebuilt by `kalm run --stale`, `--repeats` times each (medians);
3. one catalogue field changed (another source's instruction), `--stale`;
4. one profile number that only the filter reads (filter.top_k), `--stale`.
For each it prints the rebuilt asset count against the affected ones (goal: exactly those). Last line:
`RATIO rebuild one source/full = X` (goal <= 1/N + 0.1): the median, over the repeats, of each edit's time over the
full rebuild run just before it (a machine whose speed drifts weighs on both sides of a pair alike).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl  # noqa: E402
import yaml  # noqa: E402

from kalm_core.config import PROFILES  # noqa: E402
from kalm_core.python_docs import harvest  # noqa: E402

DATA = ("group:raw or group:staged or group:synthetic or group:filtered or (group:marts and not key:marts/mteb_summary) "
        "or group:batched")  # every data layer; mteb_summary reads the evaluation


def _project(root: Path, n_sources: int, pairs: int) -> Path:
    docs = harvest(["torch", "numpy"])
    need = (n_sources + 1) * pairs
    if docs.height < need:
        raise SystemExit(f"only {docs.height} docstring pairs for {need}: lower --pairs or --sources")
    docs = docs.head(need)
    sources = []
    for i in range(n_sources + 1):
        part = docs.slice(i * pairs, pairs)
        name = "heldout" if i == n_sources else f"src{i:02d}"
        pl.DataFrame({"query": part["query"], "pos": part["positives"]}).write_ndjson(root / f"{name}.jsonl")
        sources.append({"name": name, "uri": f"{name}.jsonl", "held_out": name == "heldout"})
    (root / "sources.yaml").write_text(yaml.safe_dump({"sources": sources}))
    return root / "sources.yaml"


def _run(args: list[str]) -> tuple[float, set[str]]:
    """(seconds, assets materialised) of one in-process `kalm run`."""
    from dagster_project import runner
    from dagster_project.cli import main

    inst = runner.instance()
    before = _latest(inst)
    t0 = time.perf_counter()
    code = main(["run", *args])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"kalm run {' '.join(args)} exited with {code}")
    return seconds, {key for key, stamp in _latest(inst).items() if before.get(key) != stamp}


def _latest(inst) -> dict[str, float]:
    """asset -> timestamp of its latest materialisation."""
    out = {}
    for key in inst.get_asset_keys():
        event = inst.get_latest_materialization_event(key)
        if event is not None:
            out[key.to_user_string()] = event.timestamp
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=200, help="docstring pairs per source")
    ap.add_argument("--repeats", type=int, default=5, help="full and one-source rebuilds, alternated; medians")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog = _project(root, args.sources, args.pairs)
        demo = PROFILES["demo"]
        profile_file = root / "profile.json"
        # batches grouped by task type: a few hundred pairs per source are too few to fill a source-pure batch of
        # 32 whose texts never repeat (mined negatives are the source's own positives)
        bench = replace(demo, name="bench", batch=replace(demo.batch, group_by="task_type"))
        profile_file.write_text(json.dumps(asdict(bench), default=list))
        os.environ.update({"KALM_CATALOG": str(catalog), "KALM_LAKE": str(root / "data" / "lake"),
                           "KALM_PROFILE": str(profile_file), "DAGSTER_HOME": str(root / "dagster_home"),
                           "HF_HUB_OFFLINE": "1"})
        import io
        from contextlib import redirect_stdout

        quiet = io.StringIO()
        with redirect_stdout(quiet):
            first, built = _run(["--select", DATA])
        print(f"initial build {first:.1f}s ({len(built)} assets)")
        tail = {"marts/training_pairs", "marts/filter_report", "marts/negatives_report", "marts/data_mix",
                "marts/contamination", "marts/duplicate_pairs", "batched/batches", "batched/batch_purity",
                "batched/left_over"}
        chain = {"raw/src03", "staged/src03", "filtered/src03"} | tail

        def rebuild(label: str, change, expected: set[str]) -> float:
            change()
            with redirect_stdout(quiet):
                seconds, rebuilt = _run(["--stale", "--select", DATA])
            exact = "exactly the affected ones" if rebuilt == expected else (
                f"expected {len(expected)}: extra {sorted(rebuilt - expected)}, missing {sorted(expected - rebuilt)}")
            print(f"{label:42s} {seconds:6.1f}s; {len(rebuilt)} assets rebuilt ({exact})")
            return seconds

        def edit_file():
            path = root / "src03.jsonl"
            rows = pl.read_ndjson(path)
            rows.head(rows.height - 10).write_ndjson(path)  # ten pairs removed

        # full and one-source rebuilds alternate, so a machine whose speed drifts weighs on both alike
        fulls, ones = [], []
        for i in range(args.repeats):
            with redirect_stdout(quiet):
                seconds, rebuilt_full = _run(["--full-refresh", "--select", DATA])
            fulls.append(seconds)
            print(f"{'full rebuild of the data layers':42s} {seconds:6.1f}s; {len(rebuilt_full)} assets "
                  "(embedding cache warm, incremental models built whole)")
            ones.append(rebuild(f"one source file (src03), edit {i + 1}", edit_file, chain))
        full, one = statistics.median(fulls), statistics.median(ones)

        def edit_catalogue():
            data = yaml.safe_load(catalog.read_text())
            data["sources"][5]["instruction"] = "Given a summary of a numpy function, retrieve its documentation"
            catalog.write_text(yaml.safe_dump(data))
        seconds = rebuild("one catalogue field (src05 instruction)", edit_catalogue,
                          {"raw/src05", "staged/src05", "filtered/src05"} | tail)
        print(f"{'':42s} = {seconds / full:.2f} of the full rebuild (re-encodes src05's queries)")

        def edit_profile():
            data = json.loads(profile_file.read_text())
            data["filter"]["top_k"] = data["filter"]["top_k"] + 1
            profile_file.write_text(json.dumps(data))
        seconds = rebuild("one filter number (filter.top_k)", edit_profile,
                          {f"filtered/src{i:02d}" for i in range(args.sources)} | {"filtered/synthetic"} | tail)
        print(f"{'':42s} = {seconds / full:.2f} of the full rebuild")
    # each edit against the full rebuild just before it: the machine's speed drift cancels within a pair
    paired = [o / f for o, f in zip(ones, fulls)]
    print(f"median of {args.repeats}: full rebuild {full:.1f}s, one source {one:.1f}s; paired ratios "
          f"{', '.join(f'{r:.2f}' for r in paired)}")
    print(f"RATIO rebuild one source/full = {statistics.median(paired):.2f} (goal <= {1 / args.sources + 0.1:.2f}; "
          "median of the paired ratios)")


if __name__ == "__main__":
    main()
