"""docs/api.md stays true to the code: every operation, error code and setting is documented
there, nothing documented there is missing from the code, and no project document links to
a file outside the repository.

When a test here fails after you added an endpoint, an error or a setting, the message
says what to add to docs/api.md; when it fails after you removed one, what to delete."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import conductor_api
from conductor_api.app import create_app
from conductor_api.config import Settings
from conductor_api.errors import AppError
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"
PACKAGE = Path(conductor_api.__file__).resolve().parent
METHODS = ("get", "post", "put", "patch", "delete", "head", "options")

# Operations that docs/api.md may name although the application's OpenAPI document does not
# list them (for example a listener of its own on another port): (METHOD, path) -> why.
OUTSIDE_OPENAPI: dict[tuple[str, str], str] = {
    ("GET", "/metrics"): "served by `serve` on METRICS_HOST:METRICS_PORT, not by the app",
}

# Modules not imported to find error classes: they run things on import.
SKIP_MODULES = ("conductor_api.__main__", "conductor_api.migrations")

# A backticked `METHOD /path` (the code span may wrap onto the next line).
_OPERATION = re.compile(r"`(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(/[^`\s?#]*)[^`]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


# --- reading the document --------------------------------------------------------------------


def doc_text() -> str:
    """docs/api.md."""
    return DOC.read_text(encoding="utf-8")


def sections(text: str, level: int) -> dict[str, str]:
    """The body of every heading of `level` (`##` is 2), by heading text."""
    found: dict[str, str] = {}
    title: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match and len(match.group(1)) <= level:
            if title is not None:
                found[title] = "\n".join(lines)
            title = match.group(2) if len(match.group(1)) == level else None
            lines = []
        elif title is not None:
            lines.append(line)
    if title is not None:
        found[title] = "\n".join(lines)
    return found


def tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Every Markdown table: its header cells and its rows' cells."""
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2:
            yield block[0], [row for row in block[2:] if len(row) == len(block[0])]
        block = []


def column(text: str, names: set[str]) -> set[str]:
    """The backticked values in every table column whose header is one of `names`."""
    values: set[str] = set()
    for header, rows in tables(text):
        for i, cell in enumerate(header):
            if cell.strip("`").lower() in names:
                for row in rows:
                    values |= set(_CODE_SPAN.findall(row[i]))
    return values


def documented_operations(text: str) -> set[tuple[str, str]]:
    """Every `METHOD /path` the document names, wherever it names it."""
    return {(m.group(1), m.group(2)) for m in _OPERATION.finditer(text)}


def headed_operations(text: str) -> set[tuple[str, str]]:
    """Every `METHOD /path` that is a heading of its own."""
    found: set[tuple[str, str]] = set()
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            found |= documented_operations(match.group(2))
    return found


# --- reading the code ------------------------------------------------------------------------


@cache
def openapi_operations() -> frozenset[tuple[str, str]]:
    """(METHOD, path) of every operation in the application's OpenAPI document."""
    import tempfile

    with tempfile.TemporaryDirectory() as data_dir:
        document: dict[str, Any] = create_app(make_settings(Path(data_dir), None)).openapi()
    return frozenset(
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in METHODS
    )


def _subclasses(cls: type[AppError]) -> Iterator[type[AppError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def error_class_codes() -> dict[str, str]:
    """`code` of `AppError` and of every subclass anywhere in the package, by code."""
    for module in pkgutil.walk_packages([str(PACKAGE)], "conductor_api."):
        if not module.name.startswith(SKIP_MODULES):
            importlib.import_module(module.name)
    classes: list[type[AppError]] = [AppError, *_subclasses(AppError)]
    return {cls.code: f"{cls.__module__}.{cls.__qualname__}" for cls in classes}


def _strings(node: ast.AST | None) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value


def _code_targets(target: ast.expr, value: ast.expr) -> Iterator[str]:
    """`code = "x"` and `status, code = 401, "x"` (class attributes of errors)."""
    if isinstance(target, ast.Name) and target.id == "code":
        yield from _strings(value)
    elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        for t, v in zip(target.elts, value.elts, strict=False):
            yield from _code_targets(t, v)


def _parameters(trees: list[tuple[Path, ast.Module]]) -> dict[str, list[str]]:
    """Positional parameter names of every function defined in the package, by name."""
    params: dict[str, list[str]] = {}
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params[node.name] = [a.arg for a in [*node.args.posonlyargs, *node.args.args]]
    return params


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_codes(func: ast.expr) -> bool:
    """Whether a call is a method of a mapping named `*_CODES`."""
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id.endswith("_CODES")
    )


def literal_codes() -> dict[str, str]:
    """Error codes written as literals in the package, by code, with where.

    What an error body's `code` (or an OAuth 2.0 body's `error`) can be set from: a dict
    entry `"code": "x"`, an argument `code="x"` or a positional one to a parameter named
    `code` or `error`, a `code = "x"` assignment, and the values (and `.get` default) of a
    `*_CODES` mapping."""
    trees = [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(PACKAGE.rglob("*.py"))]
    params = _parameters(trees)
    keys = {"code", "error"}
    found: dict[str, str] = {}
    for path, tree in trees:
        where = str(path.relative_to(PACKAGE.parent))
        for node in ast.walk(tree):
            values: list[str] = []
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if key is not None and set(_strings(key)) & keys:
                        values += _strings(value)
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg in keys:
                        values += _strings(keyword.value)
                if _called_name(node) == "get" and _is_codes(node.func) and len(node.args) > 1:
                    values += _strings(node.args[1])  # the default of `_STATUS_CODES.get`
                names = params.get(_called_name(node) or "", [])
                for name, arg in zip(names, node.args, strict=False):
                    if name in keys:
                        values += _strings(arg)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    values += _code_targets(target, node.value)
                    if (
                        isinstance(target, ast.Name)
                        and target.id.endswith("_CODES")
                        and isinstance(node.value, ast.Dict)
                    ):
                        for value in node.value.values:
                            values += _strings(value)
            for code in values:
                found.setdefault(code, f"{where}:{getattr(node, 'lineno', '?')}")
    return found


# --- the tests -------------------------------------------------------------------------------


class TestOperations:
    def test_every_operation_has_a_heading(self) -> None:
        missing = sorted(openapi_operations() - headed_operations(doc_text()))
        assert not missing, (
            "operations of the OpenAPI document without a heading in docs/api.md: "
            + ", ".join(f"{m} {p}" for m, p in missing)
            + ". Add a heading such as `### `POST /api/v1/auth/login`` (in backticks) with "
            "its body, answers and errors, and a row in the endpoint table."
        )

    def test_every_documented_operation_exists(self) -> None:
        known = openapi_operations() | set(OUTSIDE_OPENAPI)
        unknown = sorted(documented_operations(doc_text()) - known)
        assert not unknown, (
            "docs/api.md names operations the OpenAPI document does not have: "
            + ", ".join(f"{m} {p}" for m, p in unknown)
            + ". Fix the method or path, remove them, or (for an endpoint served outside the "
            "application) add them to OUTSIDE_OPENAPI in tests/test_api_docs.py with the reason."
        )

    def test_the_endpoint_table_lists_every_operation(self) -> None:
        endpoints = sections(doc_text(), 2)["Endpoints"]
        listed = {
            op
            for header, rows in tables(endpoints)
            for row in rows
            for op in documented_operations(row[0])
        }
        missing = sorted(openapi_operations() - listed - set(OUTSIDE_OPENAPI))
        assert not missing, (
            "operations missing from the table under `## Endpoints` in docs/api.md: "
            + ", ".join(f"{m} {p}" for m, p in missing)
        )


class TestErrorCodes:
    def test_every_error_class_code_is_in_an_error_table(self) -> None:
        documented = column(doc_text(), {"code", "error"})
        missing = {c: w for c, w in error_class_codes().items() if c not in documented}
        assert not missing, (
            "error codes raised by the server but missing from docs/api.md's error table "
            "(a table with a `code` column): "
            + ", ".join(f"{code} ({where})" for code, where in sorted(missing.items()))
            + ". Add a row: | status | `code` | when | extra |."
        )

    def test_every_literal_code_is_in_an_error_table(self) -> None:
        documented = column(doc_text(), {"code", "error"})
        missing = {c: w for c, w in literal_codes().items() if c not in documented}
        assert not missing, (
            "error codes written as literals in the package but missing from an error table "
            "(a table with a `code` or `error` column) in docs/api.md: "
            + ", ".join(f"{code} ({where})" for code, where in sorted(missing.items()))
        )

    def test_every_documented_code_is_answered(self) -> None:
        # The nginx of deploy/ answers some itself, in the API's shape.
        nginx = (ROOT / "deploy" / "nginx-conductor-api.conf").read_text()
        answered = set(error_class_codes()) | set(literal_codes())
        answered |= set(re.findall(r'"code": "([a-z_]+)"', nginx))
        stale = sorted(column(doc_text(), {"code"}) - answered)
        assert not stale, (
            "docs/api.md documents error codes the server never answers: "
            + ", ".join(stale)
            + ". Remove their rows, or fix the code's spelling."
        )

    def test_the_scan_finds_the_codes_it_must(self) -> None:
        # Guards the scan itself: these come from a class, a handler literal, a status
        # mapping and the OAuth 2.0 helper's positional arguments.
        codes = set(error_class_codes()) | set(literal_codes())
        assert {
            "invalid_credentials",
            "invalid_username",
            "validation_error",
            "method_not_allowed",
            "invalid_grant",
            "unsupported_grant_type",
        } <= codes


def configuration_table() -> set[str]:
    """The variables in the first column of the tables under `## Configuration`."""
    body = sections(doc_text(), 2)["Configuration"]
    names: set[str] = set()
    for header, rows in tables(body):
        if header[0].lower() == "variable":
            for row in rows:
                names |= {n for n in _CODE_SPAN.findall(row[0]) if n.isupper()}
    return names


class TestSettings:
    def test_every_setting_is_in_the_configuration_table(self) -> None:
        settings = {name.upper() for name in Settings.model_fields}
        missing = sorted(settings - configuration_table())
        assert not missing, (
            "settings missing from the configuration table of docs/api.md: "
            + ", ".join(missing)
            + ". Add a row: | `NAME` | default | meaning |; also add it to .env.example."
        )

    def test_every_documented_setting_exists(self) -> None:
        settings = {name.upper() for name in Settings.model_fields}
        unknown = sorted(configuration_table() - settings)
        assert not unknown, (
            "docs/api.md's configuration table names variables Settings does not read: "
            + ", ".join(unknown)
        )

    def test_every_setting_is_in_env_example(self) -> None:
        example = (ROOT / ".env.example").read_text(encoding="utf-8")
        missing = sorted(
            name.upper()
            for name in Settings.model_fields
            if not re.search(rf"^#?\s*{name.upper()}=", example, re.MULTILINE)
        )
        assert not missing, ".env.example has no line for: " + ", ".join(missing)


def project_documents() -> list[Path]:
    """Every Markdown file of the project (not of tools or virtual environments)."""
    return sorted(
        p
        for p in ROOT.rglob("*.md")
        if not any(part.startswith(".") or part == "data" for part in p.relative_to(ROOT).parts)
    )


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading ids of a Markdown file."""
    found: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _HEADING.match(line)
        if match:
            found.add(github_anchor(match.group(2)))
    return found


class TestLinks:
    def test_documents_exist(self) -> None:
        names = {str(p.relative_to(ROOT)) for p in project_documents()}
        assert {"README.md", "docs/api.md", "docs/android.md"} <= names

    @pytest.mark.parametrize("path", project_documents(), ids=lambda p: str(p.relative_to(ROOT)))
    def test_links_stay_inside_the_repository(self, path: Path) -> None:
        broken: list[str] = []
        for target in _LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: ...
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.is_relative_to(ROOT) or not linked.exists():
                broken.append(f"{target} (no such file in the repository)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target} (no heading with that anchor)")
        assert not broken, f"{path.relative_to(ROOT)}: broken links: " + ", ".join(broken)

    @pytest.mark.parametrize("path", project_documents(), ids=lambda p: str(p.relative_to(ROOT)))
    def test_no_reference_to_the_shared_contract(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        assert "shared/API.md" not in text, (
            f"{path.relative_to(ROOT)} refers to shared/API.md, which is not part of the "
            "repository: link docs/api.md instead"
        )
