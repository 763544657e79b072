"""Code versions that cannot drift: a layer's version covers every project module its code imports (the static
import closure), so editing any kalm_core module turns stale exactly the layers whose code imports it."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kalm_core", "assets", "dagster_project")

# In a copy of the project: every layer's code version, then, for each kalm_core module in turn, the layers whose
# version moved when a line was appended to that module (the file restored after).
EDIT_EACH = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from assets.versions import LAYER_CODE
    from kalm_core import versions
    def layer_versions():
        versions.module_hash.cache_clear()
        return {layer: versions.code_version(mods) for layer, mods in LAYER_CODE.items()}
    base, moved = layer_versions(), {}
    root = Path(sys.argv[1])
    for path in sorted((root / "kalm_core").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        text = path.read_text()
        path.write_text(text + "\\n# edited\\n")
        moved[module] = sorted(layer for layer, v in layer_versions().items() if v != base[layer])
        path.write_text(text)
    print(json.dumps({"moved": moved, "closure": LAYER_CODE}))
""")

# What Python itself loads when a layer's code is imported: a lower bound on what its version must cover.
LOADED = "import importlib, json, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n" \
         "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('kalm_core', 'assets', " \
         "'dagster_project'))))"


def test_editing_any_kalm_core_module_moves_exactly_the_layers_that_import_it(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", EDIT_EACH, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    moved, closure = out["moved"], out["closure"]
    assert len(moved) >= 40  # every module of the library was edited once
    for module, layers in moved.items():
        assert layers == sorted(layer for layer, mods in closure.items() if module in mods), module
    # modules a hand-kept list once missed now move the layers that use them
    assert "training" in moved["kalm_core.losses.gather"] and "filtered" in moved["kalm_core.prompts"]
    assert moved["kalm_core.synthesis.backends"] == ["synthetic"]
    assert moved["kalm_core.batching"] == ["batched", "evaluation", "mix", "training"]  # via assets.batched
    assert "raw" not in moved["kalm_core.mixing"] and "staged" not in moved["kalm_core.trainer"]


def test_a_layers_version_covers_at_least_what_python_loads_for_it():
    """The static closure also follows imports inside functions; it never misses a module an import loads."""
    from assets.versions import LAYER_CODE, LAYER_ROOTS

    procs = {layer: subprocess.Popen([sys.executable, "-c", LOADED, *roots], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
             for layer, roots in LAYER_ROOTS.items()}
    for layer, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        loaded = set(json.loads(stdout)) - {"assets.versions", "kalm_core.versions"}
        assert loaded <= set(LAYER_CODE[layer]), (layer, sorted(loaded - set(LAYER_CODE[layer])))
