"""Each rule env's pip part (``envs/*.yaml``), installed into a fresh venv, imports what its
rules' scripts import, and finds dlib's landmark model, with ``pkg_resources`` unavailable.

What ``snakemake --sdm conda`` would build, minus conda: the env's pip pins, in a new
``python -m venv`` whose setuptools is >= 82 (which has no ``pkg_resources``, like every
Python 3.12+ venv; torch's setuptools<82 brings it back in the torch envs, so the imports
run with it blocked). Slow (torch is downloaded and installed twice, ~3 minutes): it runs
with ``make test-envs``, which CI runs after ``make test``, not within ``make test``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_envs import REPO, env_pins, rules, third_party_imports

pytestmark = pytest.mark.envs
ENVS = sorted({env for _, _, env in rules()})


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def vafusion_modules(script: Path) -> set[str]:
    """The vafusion modules a rule's script imports at its top level."""
    return {node.module for node in ast.walk(ast.parse(script.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vafusion")}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_installs_in_a_fresh_venv_and_imports_its_rules_scripts(env, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(pip + ["setuptools>=82"])
    pins = env_pins(env)
    run(pip + pins)
    has_pkg_resources = subprocess.run([python, "-c", "import pkg_resources"], capture_output=True).returncode == 0
    # torch 2.11 requires setuptools<82 and brings pkg_resources back; elsewhere the venv
    # keeps setuptools >= 82, without it, as Python 3.12+ venvs are
    assert has_pkg_resources == any(pin.startswith("torch==") for pin in pins)

    mine = [(rule, script) for rule, script, e in rules() if e == env]
    modules = sorted(set().union(*(third_party_imports(s) for _, s in mine)))
    ours = sorted(set().union(*(vafusion_modules(s) for _, s in mine)))
    check = textwrap.dedent(f"""
        import importlib, sys
        sys.modules["pkg_resources"] = None  # importing it fails, as without setuptools < 82
        sys.path.insert(0, {str(REPO / "src")!r})
        for name in {modules + ours!r}:
            importlib.import_module(name)
        # face detection: dlib's landmark model, found without pkg_resources
        if {"align_faces" in [r for r, _ in mine]!r}:
            import dlib
            from vafusion.faces import landmark_model_path
            dlib.shape_predictor(str(landmark_model_path()))
        print("imported", len({modules + ours!r}), "modules for", {[r for r, _ in mine]!r})
    """)
    out = run([python, "-c", check], cwd=tmp_path).stdout
    assert out.startswith("imported")
