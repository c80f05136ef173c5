"""The shape of the code: no import cycle in capsmm, one job per config module, modalities registered."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import capsmm
from capsmm.config import MODALITY_SECTIONS, build_runs, multimodal_schema, register_modality, sections
from capsmm.config.sections import EncoderConfig
from capsmm.errors import ConfigError

PACKAGE = Path(capsmm.__file__).parent


def module_name(path: Path) -> str:
    parts = ["capsmm", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the capsmm modules it imports, anywhere in its text: at the top, inside functions, and
    under ``if TYPE_CHECKING`` (a type-only import still ties the two modules together)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules and a.name != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_capsmm_modules_import_each_other_directly_or_through_others():
    graph = import_graph()
    assert "capsmm.config.sections" in graph and "capsmm.strategies" in graph["capsmm.config.sections"]  # the graph sees imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_no_modality_package():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.split(".")[0] == "modalities"], path


def test_config_is_a_package_of_small_modules():
    modules = sorted((PACKAGE / "config").glob("*.py"))
    assert {p.stem for p in modules} >= {"fields", "sections", "modalities", "schemas", "overrides", "sweeps", "folders"}
    assert max(len(p.read_text().splitlines()) for p in modules) < 300


@pytest.fixture
def toy_modality():
    """A modality registered for one test, and taken out again (the registry is process-wide)."""

    @dataclasses.dataclass
    class ToyData:
        name: str = "toys"
        rate: int = 3

        def validate(self, prefix: str) -> None:
            pass

    register_modality("toy", data=ToyData, encoder=EncoderConfig, encoder_defaults={"backbone": "mlp"})
    yield ToyData
    del MODALITY_SECTIONS._entries["toy"]


def test_a_registered_modality_gets_its_own_sections_in_multimodal_configs(toy_modality):
    schema = multimodal_schema()
    assert {"toy", "toy_model", "audio", "audio_model", "image", "image_model"} <= set(sections(schema))
    assert sections(schema)["toy"] is toy_modality
    run = build_runs(None, ["toy.rate=5", "multimodal.modalities=[toy, image]", "multimodal.anchor=image"], schema)[0]
    assert run.toy.rate == 5 and run.toy_model.backbone == "mlp"
    with pytest.raises(ConfigError, match="toy_model.backbone 'mlp' encodes image, not toy"):  # its sections are validated
        run.validate()


def test_the_graph_is_cut_in_one_place():
    """Every ``detach()`` of the project's packages is :func:`capsmm.encoder.without_graph`'s (the
    stop-gradient and every value kept without its graph go through it): a second one fails here."""
    root = Path(capsmm.__file__).resolve().parent.parent
    calls = [(path.relative_to(root).as_posix(), node.lineno)
             for package in ("capsmm", "modalities") for path in sorted((root / package).rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("detach", "detach_")]
    assert [path for path, _ in calls] == ["capsmm/encoder.py"], calls
