"""The installed distribution: every module imports from declared dependencies, one top-level name."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import grokfetch

# Folders installed under another name (pyproject's package-dir): not found by walking grokfetch/.
MAPPED = ("grokfetch.convert", "grokfetch.verify")


def _modules() -> list[str]:
    names = set(MAPPED)
    for pkg in (grokfetch, *(importlib.import_module(m) for m in MAPPED)):
        names |= {m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")}
    return sorted(n for n in names if not n.endswith("__main__"))


def test_every_module_imports():
    names = _modules()
    assert {"grokfetch.convert.gguf", "grokfetch.verify.run", "grokfetch.smoke.model"} <= set(names)
    for name in names:
        importlib.import_module(name)


def _installed_dist() -> importlib.metadata.Distribution:
    """grokfetch's installed metadata (not the ``grokfetch.egg-info`` an editable build leaves here)."""
    repo = Path(__file__).resolve().parents[1]
    for dist in importlib.metadata.distributions(name="grokfetch"):
        if repo not in Path(str(dist.locate_file(""))).resolve().parents and \
                Path(str(dist.locate_file(""))).resolve() != repo:
            return dist
    raise AssertionError("grokfetch is not installed (pip install -e .)")


def test_only_top_level_name_is_grokfetch():
    dist = _installed_dist()
    top = dist.read_text("top_level.txt")
    assert top is None or top.split() == ["grokfetch"]
    installed = [str(f) for f in dist.files or []]
    assert not [f for f in installed if re.match(r"^(convert|verify)/", f)]
    # an editable install maps names to folders: only grokfetch and its subpackages
    for f in installed:
        if "__editable__" in f and f.endswith("finder.py"):
            text = Path(str(dist.locate_file(f))).read_text()
            mapping = re.search(r"MAPPING\s*(?::[^=]*)?=\s*(\{.*?\})", text, re.S)
            assert mapping, text[:500]
            assert all(k == "grokfetch" or k.startswith("grokfetch.")
                       for k in re.findall(r"'([^']+)':", mapping.group(1)))


def test_imports_only_declared_dependencies():
    """Every third-party module the package imports is a declared dependency (or theirs)."""
    dist = _installed_dist()
    declared = {re.split(r"[ <>=!;\[]", r, maxsplit=1)[0].lower().replace("-", "_")
                for r in dist.requires or [] if "extra ==" not in r}
    code = ("import sys, importlib\n"
            "before = set(sys.modules)\n"
            f"for m in {_modules()!r}: importlib.import_module(m)\n"
            "new = {n.split('.')[0] for n in set(sys.modules) - before}\n"
            "print('\\n'.join(sorted(n for n in new if getattr(sys.modules.get(n), '__file__', None))))")
    top = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stdlib = set(sys.stdlib_module_names)
    packages = importlib.metadata.packages_distributions()
    undeclared = []
    for name in top.stdout.split():
        if name in stdlib or name.startswith("_") or name == "grokfetch":
            continue
        dists = {d.lower().replace("-", "_") for d in packages.get(name, [])}
        # a module may come with a declared distribution's own dependency (jax brings jaxlib)
        if dists & declared or _required_by_declared(dists, declared):
            continue
        undeclared.append((name, sorted(dists)))
    assert not undeclared, f"imported but not declared: {undeclared}"


def _required_by_declared(dists: set[str], declared: set[str]) -> bool:
    seen, todo = set(), list(declared)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[ <>=!;\[]", r, maxsplit=1)[0].lower().replace("-", "_")
                 for r in reqs if "extra ==" not in r]
    return bool(dists & seen)
