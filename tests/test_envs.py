"""Each rule's conda env (`envs/*.yaml`) holds what its script imports.

The script's imports are followed through the vafusion modules it uses (function-level
imports included: they run too), and every third-party module must come from a pip
package of the rule's env or from one of their own requirements, as pip would install
them (read from the installed packages' metadata)."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def rules() -> list[tuple[str, Path, Path]]:
    """(rule, its script, its env file) for every rule with a script; a rule made in a loop
    (``rule:`` with a ``name:`` directive, one per feature stream) under its name pattern."""
    found = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "workflow" / "demo.smk"]:
        for block in re.split(r"(?m)^\s*rule\b ?", smk.read_text())[1:]:
            named = re.match(r':\s*(?:#[^\n]*\s*)*name:\s*\n\s*(f?"[^"]+")', block)
            name = named.group(1) if named else block.split(":", 1)[0]
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            if script:
                assert env, f"rule {name} has a script but no conda env"
                found.append((name, (smk.parent / script.group(1)).resolve(), (smk.parent / env.group(1)).resolve()))
    return found


def module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def stream_modules() -> list[Path]:
    """The modules of every built-in feature stream: the registry imports them by name."""
    from vafusion.features import registry

    return sorted({module_file(s.module) for s in registry.BUILTIN.values()} | {module_file("vafusion.features.external"),
                                                                               module_file("vafusion.features.backbones")})


def third_party_imports(script: Path) -> set[str]:
    """Top-level names of the non-stdlib modules ``script`` needs, through vafusion (and,
    for an adapter that looks a stream up in the registry, every stream's module)."""
    seen, todo, needed = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top == "vafusion":
                    parts = name.split(".")
                    for i in range(1, len(parts) + 1):  # the package __init__s run too
                        if (f := module_file(".".join(parts[:i]))) is not None:
                            todo.append(f)
                    if isinstance(node, ast.ImportFrom):  # from vafusion.x import submodule
                        todo += [f for a in node.names if (f := module_file(f"{name}.{a.name}")) is not None]
                    if path == script and "registry.get(" in script.read_text():
                        todo += stream_modules()  # an adapter that runs a stream's extractor, found by name
                elif top not in sys.stdlib_module_names and top != "__future__":
                    needed.add(top)
    return needed


def env_pins(env: Path) -> list[str]:
    return [p for d in yaml.safe_load(env.read_text())["dependencies"] if isinstance(d, dict) for p in d["pip"]]


def provided_modules(pins: list[str]) -> set[str]:
    """Import names of the pip packages ``pins`` and of everything they require (the
    top-level entries of each installed package's files)."""
    todo = [re.split(r"[=<>\[ ;]", p)[0] for p in pins]
    seen, modules = set(), set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or []:
            top = file.parts[0]
            if not top.endswith((".dist-info", ".data")) and top != "..":
                modules.add(top.split(".")[0])
        todo += [re.split(r"[=<>!~\[ ;(]", r)[0] for r in dist.requires or [] if "extra ==" not in r]
    return modules


@pytest.mark.parametrize("rule, script, env", rules(), ids=lambda x: x if isinstance(x, str) else "")
def test_env_holds_what_the_rule_imports(rule, script, env):
    missing = third_party_imports(script) - provided_modules(env_pins(env))
    assert not missing, f"rule {rule} ({script.name}) imports {sorted(missing)}, which {env.name} does not install"


def test_pip_install_gets_what_the_package_imports():
    """``pip install .`` installs requirements.txt's pins (pyproject's dynamic dependencies):
    they must cover every module the vafusion package imports."""
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    needed = set()
    for module in sorted(SRC.rglob("*.py")):
        needed |= third_party_imports(module)
    assert needed - provided_modules(pins) == set()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dependencies = {file = ["requirements.txt"]}' in pyproject and 'vafusion = "vafusion.cli:main"' in pyproject
