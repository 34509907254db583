"""The import-linter contracts in pyproject.toml (``make lint`` checks them) cover every module
under portal/: ``portal`` is both the project package and an app, so its modules are named
in the layers one by one, and a new module named in none would slip past the check."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Packages whose own __init__ is in no layer (their modules are split between layers); each
# may import only these.
UNLAYERED = {"portal": {"portal.celery"}, "portal.audit": set()}


def contracts() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def layered_modules() -> set[str]:
    names = set()
    for contract in contracts()["contracts"]:
        for layer in contract.get("layers", []):
            for part in layer.replace("|", ":").split(":"):
                names.add(part.strip().strip("()"))
    return names


def portal_modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "portal").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def covered(module: str, layered: set[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for name in layered)


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_contracts_check_every_app_package() -> None:
    assert set(contracts()["root_packages"]) == {"portal", "gateway", "keys", "billing"}
    layered = layered_modules()
    assert {"gateway", "billing", "keys", "portal.infra"} <= layered
    assert not layered & set(UNLAYERED), "a layer holding a split package holds all of it"


def test_every_module_under_portal_is_in_a_layer() -> None:
    layered = layered_modules()
    missing = sorted(m for m in portal_modules() if m not in UNLAYERED
                     and not covered(m, layered))
    assert not missing, (
        f"{missing}: in no layer of [tool.importlinter] in pyproject.toml, so `make lint` "
        "cannot check their imports; add each to its layer (README, \"Layers\")")


def test_the_unlayered_package_inits_stay_import_light() -> None:
    modules = portal_modules()
    for package, allowed in UNLAYERED.items():
        assert imports_of(modules[package]) - {"__future__"} <= allowed, package


def test_a_module_named_in_no_layer_is_reported() -> None:
    """The check above can fail: a new module (or one whose name merely starts like a
    layer's) is in no layer until someone puts it in one."""
    layered = layered_modules()
    assert not covered("portal.reports", layered)
    assert not covered("portal.infrastructure", layered)
    assert covered("portal.infra.rediskeys", layered)
