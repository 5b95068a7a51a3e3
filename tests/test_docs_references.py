"""The documents name the tests that prove their claims (docs/reliability.md
above all): every `tests/<file>.py::<name>` they name exists, so a renamed
or deleted test cannot leave a guarantee pointing at nothing."""

from __future__ import annotations

import ast
import re

import pytest
from machine import REPO

pytestmark = pytest.mark.unit

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REFERENCE = re.compile(r"tests/([\w/]+\.py)::(\w+)")
# A bare `::name` right after a reference names another test of that file.
SAME_FILE = re.compile(r"(?:,|;)\s*`::(\w+)`")


def defined_names(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def references() -> list[tuple[str, str, str]]:
    found = []
    for document in DOCUMENTS:
        for line in document.read_text().splitlines():
            last_file = None
            for match in REFERENCE.finditer(line):
                last_file = match.group(1)
                found.append((document.name, last_file, match.group(2)))
            if last_file:
                found += [(document.name, last_file, name) for name in SAME_FILE.findall(line)]
    return found


def test_the_documents_name_tests():
    assert len(references()) > 50
    assert any(document == "reliability.md" for document, _, _ in references())


def test_every_test_a_document_names_exists():
    missing = []
    names: dict[str, set[str]] = {}
    for document, file, name in references():
        path = REPO / "tests" / file
        if not path.exists():
            missing.append(f"{document}: tests/{file} does not exist")
            continue
        if name not in names.setdefault(file, defined_names(path)):
            missing.append(f"{document}: tests/{file}::{name} is not defined there")
    assert not missing, "\n".join(missing)


def test_every_test_name_a_document_quotes_exists_somewhere():
    """Tables under a heading that names the files quote bare test names."""
    defined = set().union(*(defined_names(path) for path in (REPO / "tests").glob("*.py")))
    quoted = {(document.name, name) for document in DOCUMENTS
              for name in re.findall(r"`(?:[\w/]+\.py::)?(test_\w+)(?=[`\[])", document.read_text())}
    missing = sorted(f"{document}: {name}" for document, name in quoted if name not in defined)
    assert not missing, "\n".join(missing)
