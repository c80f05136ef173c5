"""The Python examples of the README and of docs/ run as written and their assertions hold; every
page the README links to exists."""

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from capsmm.config import MODALITY_SECTIONS
from capsmm.data import DATASETS_BY_MODALITY
from capsmm.encoder import ENCODERS
from capsmm.strategies.registry import MEMORY, PARALLEL
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@contextmanager
def registries_restored() -> Iterator[None]:
    """Undo what an example registers (README's ``tiny-cnn``): registries refuse a second entry
    under one name, so examples run again in the same process would otherwise fail."""
    saved = []
    ENCODERS.names()  # loads the plugins, which add their data-set registries
    for registry in (ENCODERS, MEMORY, PARALLEL, MODALITY_SECTIONS, *DATASETS_BY_MODALITY.values()):
        registry.names()  # built-ins and plugins first, so that they are part of what is restored
        saved.append((registry, dict(registry._entries)))
    try:
        yield
    finally:
        for registry, entries in saved:
            registry._entries = entries


def run_examples(page):
    namespace: dict = {}
    with registries_restored():
        for block in python_blocks(page):
            exec(compile(block, str(page.name), "exec"), namespace)  # noqa: S102 - our own documentation


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks(ROOT / "README.md")) >= 3


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_examples_run(page):
    run_examples(page)


def test_the_readme_examples_run_twice_in_one_process():
    run_examples(ROOT / "README.md")
    run_examples(ROOT / "README.md")
    assert "tiny-cnn" not in ENCODERS


def test_links_point_to_existing_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_every_test_the_docs_name_exists():
    """A claim that names its test (``tests/test_x.py::test_name``) points at a test that is there."""
    named = {(file, name) for page in PAGES for file, name in re.findall(r"tests/(test_\w+\.py)::(test_\w+)", page.read_text())}
    assert len(named) >= 10
    missing = [f"{file}::{name}" for file, name in sorted(named)
               if not (ROOT / "tests" / file).is_file() or f"def {name}(" not in (ROOT / "tests" / file).read_text()]
    assert missing == []
