"""Staleness read from the versions each materialisation recorded (dagster_project/staleness.py): missing, fresh,
stale on a new source version, a new code version or a new dependency, as Dagster's rule has it."""

import dagster as dg

from dagster_project.staleness import statuses

K = dg.AssetKey


def graph(code="1", extra_dep=False):
    @dg.observable_source_asset(name="src")
    def src():
        return dg.DataVersion("unused")

    @dg.asset(deps=[src], code_version="1")
    def a():
        return None

    @dg.asset(deps=[a, *([src] if extra_dep else [])], code_version=code)
    def b():
        return None

    return dg.Definitions(assets=[src, a, b])


def observe(inst, version):
    inst.report_runless_asset_event(dg.AssetObservation(asset_key=K("src"), tags={"dagster/data_version": version}))


def build(defs, inst, *keys):
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=inst, asset_selection=[K(k) for k in keys]).success


def states(defs, inst):
    return {k.to_user_string(): (s.state, s.causes) for k, s in statuses(defs, inst).items()}


def test_missing_then_fresh_then_stale_on_a_new_source_version_and_its_child_after_a_rebuild():
    with dg.DagsterInstance.ephemeral() as inst:
        defs = graph()
        assert states(defs, inst) == {"a": ("missing", ()), "b": ("missing", ())}
        observe(inst, "v1")
        build(defs, inst, "a", "b")
        assert states(defs, inst) == {"a": ("fresh", ()), "b": ("fresh", ())}
        observe(inst, "v1")  # the same version again: nothing changed
        assert states(defs, inst)["a"] == ("fresh", ())
        observe(inst, "v2")
        assert states(defs, inst) == {"a": ("stale", ("src has a new data version",)), "b": ("fresh", ())}
        build(defs, inst, "a")  # a's data version moves with its input's: b read the old one
        assert states(defs, inst) == {"a": ("fresh", ()), "b": ("stale", ("a has a new data version",))}


def test_a_new_code_version_or_dependency_makes_an_asset_stale():
    with dg.DagsterInstance.ephemeral() as inst:
        observe(inst, "v1")
        build(graph(), inst, "a", "b")
        assert states(graph(code="2"), inst)["b"] == ("stale", ("has a new code version",))
        assert states(graph(extra_dep=True), inst)["b"] == ("stale", ("has a new dependency on src",))
        build(graph(extra_dep=True), inst, "b")
        assert states(graph(), inst)["b"] == ("stale", ("removed dependency on src",))


def test_a_source_never_observed_reads_as_dagster_initial_version():
    with dg.DagsterInstance.ephemeral() as inst:
        build(graph(), inst, "a")
        assert states(graph(), inst)["a"] == ("fresh", ())
        observe(inst, "v1")
        assert states(graph(), inst)["a"][0] == "stale"
