"""What the documentation names exists: every backticked repository path and dotted module name.

Markdown files and docstrings name files (`indexer/learn/config.py`,
`benchmarks/results/retrieval.json`) and code (`indexer.index.store.ArchiveIndex`,
`python -m benchmarks.quality.retrieval`). A rename that leaves them behind fails here, with the
file, the line and the token that no longer resolves.

A backticked token is taken for a repository path when it has no spaces or placeholders, contains
a '/', and either starts with one of the repository's top-level entries or ends in a file
extension; globs must match at least one file. A dotted name that starts with one of the
project's packages must import, or be an attribute (or a field) of something that imports.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "indexer", "service", "benchmarks", "support")
# Folders that hold no documentation of ours (installed, generated or vendored files).
SKIPPED_FOLDERS = {".git", ".venv", "node_modules", "var", "vendor", "build", "dist", "runs"}
PYTHON_FOLDERS = (*PACKAGES, "tests")

INLINE_CODE = re.compile(r"(``?)([^`\n]+?)\1")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")
# A placeholder or a shell construct means the token is an example, not a path to check.
PLACEHOLDER = re.compile(r"[<>{}$~|\[\]()=,;:]|\.\.\.")
DOTTED = re.compile(r"(?<![\w./-])((?:" + "|".join(PACKAGES) + r")(?:\.[A-Za-z_]\w*)+)(?![\w/-])")
# Names like `model.pt` or `indexer.json` are files, not modules.
FILE_SUFFIXES = {
    "pt", "pth", "json", "py", "md", "npz", "npy", "faiss", "sqlite", "png", "csv", "txt",
    "toml", "yml", "yaml", "jpeg", "jpg", "tif", "tiff", "dzi", "html", "js", "css", "sh",
    "bin", "log",
}  # fmt: skip


@dataclass(frozen=True)
class Mention:
    file: Path
    line: int
    token: str

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: `{self.token}`"


def markdown_files() -> list[Path]:
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not SKIPPED_FOLDERS.intersection(path.relative_to(ROOT).parts)
    )


def python_files() -> list[Path]:
    return sorted(
        path
        for folder in PYTHON_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if not SKIPPED_FOLDERS.intersection(path.relative_to(ROOT).parts)
    )


def markdown_mentions(path: Path) -> Iterator[Mention]:
    """Inline code spans outside fenced blocks (those hold commands with example paths)."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            for match in INLINE_CODE.finditer(line):
                yield Mention(path, number, match.group(2).strip())


def markdown_links(path: Path) -> Iterator[Mention]:
    """Relative links (`[text](docs/model.md#training)`), outside fenced blocks."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            for match in LINK.finditer(line):
                if not re.match(r"^[a-z]+:", match.group(1)):
                    yield Mention(path, number, match.group(1))


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation dropped, spaces as hyphens."""
    anchors = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            text = match.group(1).lower().replace("`", "")
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def link_problem(link: Mention) -> str | None:
    target, _, anchor = link.token.partition("#")
    path = (link.file.parent / target).resolve() if target else link.file
    if not path.exists():
        return "no such file"
    if anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
        return f"{path.name} has no heading #{anchor}"
    return None


def docstring_mentions(path: Path) -> Iterator[Mention]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not node.body or not isinstance(node.body[0], ast.Expr):
            continue
        value = node.body[0].value
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            continue
        for offset, line in enumerate(value.value.splitlines()):
            for match in INLINE_CODE.finditer(line):
                yield Mention(path, value.lineno + offset, match.group(2).strip())


def all_mentions() -> list[Mention]:
    mentions = [m for path in markdown_files() for m in markdown_mentions(path)]
    mentions += [m for path in python_files() for m in docstring_mentions(path)]
    return mentions


def top_level_entries() -> set[str]:
    return {path.name for path in ROOT.iterdir() if path.name not in SKIPPED_FOLDERS}


def looks_like_repository_path(token: str, top_level: set[str]) -> bool:
    if " " in token or "/" not in token or PLACEHOLDER.search(token):
        return False
    if token.startswith(("/", ".", "http", "-")):
        return False
    first = token.split("/", 1)[0]
    return first in top_level or bool(EXTENSION.search(token.rstrip("/")))


def path_exists(token: str, mentioned_in: Path) -> bool:
    """Relative to the repository root, or to the mentioning file's folder (Markdown links)."""
    for base in (ROOT, mentioned_in.parent):
        if "*" in token or "?" in token:
            if any(base.glob(token)):
                return True
        elif (base / token).exists():
            return True
    return False


def _has_member(owner: Any, name: str) -> bool:
    if hasattr(owner, name):
        return True
    # Pydantic fields and dataclass fields without defaults are not class attributes.
    fields = {
        **getattr(owner, "model_fields", {}),
        **getattr(owner, "__dataclass_fields__", {}),
    }
    classes = getattr(owner, "__mro__", ())
    annotated = {key for klass in classes for key in vars(klass).get("__annotations__", {})}
    return name in fields or name in annotated


def resolve(dotted: str) -> str | None:
    """None when `dotted` names a module or something in one; else what went wrong."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            owner: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and not module_name.startswith(error.name):
                return f"importing {module_name} failed: {error}"
            continue
        for part in parts[split:]:
            if not _has_member(owner, part):
                return f"{module_name} has no {'.'.join(parts[split:])}"
            owner = getattr(owner, part, None)
        return None
    return "no such module"


def dotted_names(token: str) -> list[str]:
    names = []
    for match in DOTTED.finditer(token):
        name = match.group(1)
        if name.rsplit(".", 1)[1] not in FILE_SUFFIXES:
            names.append(name)
    return names


@pytest.fixture(scope="module")
def mentions() -> list[Mention]:
    return all_mentions()


def test_the_documentation_is_found(mentions: list[Mention]) -> None:
    files = {mention.file.relative_to(ROOT).as_posix() for mention in mentions}
    assert {"README.md", "docs/architecture.md", "benchmarks/README.md"} <= files


def test_every_backticked_repository_path_exists(mentions: list[Mention]) -> None:
    top_level = top_level_entries()
    missing = [
        mention.where()
        for mention in mentions
        if looks_like_repository_path(mention.token, top_level)
        and not path_exists(mention.token, mention.file)
    ]
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_every_dotted_project_name_resolves(mentions: list[Mention]) -> None:
    unresolved = [
        f"{mention.where()} ({name}: {problem})"
        for mention in mentions
        for name in dotted_names(mention.token)
        if (problem := resolve(name)) is not None
    ]
    assert not unresolved, "names in the docs that do not resolve:\n" + "\n".join(unresolved)


def test_every_relative_link_in_the_markdown_reaches_its_file_and_heading() -> None:
    broken = [
        f"{link.where()} ({problem})"
        for path in markdown_files()
        for link in markdown_links(path)
        if (problem := link_problem(link)) is not None
    ]
    assert not broken, "links in the docs that lead nowhere:\n" + "\n".join(broken)


def test_a_heading_gives_the_anchor_github_gives_it(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n## Backbones: what the codes keep, and what each costs\n")
    assert "backbones-what-the-codes-keep-and-what-each-costs" in heading_anchors(page)
    assert link_problem(Mention(page, 1, "page.md#title")) is None
    assert (
        link_problem(Mention(page, 1, "#no-such-heading"))
        == "page.md has no heading #no-such-heading"
    )
    assert link_problem(Mention(page, 1, "missing.md")) == "no such file"


@pytest.mark.parametrize(
    ("token", "is_path"),
    [
        ("indexer/learn/config.py", True),
        ("benchmarks/results/recipe_sweep_*.json", True),
        ("docs/slides.md", True),
        ("runs/bracs/model.pt", True),
        ("OUT/cache/<key>/views.npy", False),
        ("/static/slide.html?id=...", False),
        ("../shared/data", False),
        ("histosearch index --source slides", False),
        ("fastscan/refine", False),
    ],
)
def test_a_token_is_a_path_when_it_names_a_top_level_entry_or_a_file(
    token: str, is_path: bool
) -> None:
    assert looks_like_repository_path(token, {"indexer", "benchmarks", "docs"}) is is_path


def test_a_renamed_module_or_attribute_is_reported() -> None:
    assert resolve("indexer.index.store.ArchiveIndex") is None
    assert resolve("model.ModelSpec.backbone") is None
    assert resolve("indexer.index.no_such_module") == "indexer.index has no no_such_module"
    assert resolve("indexer.index.store.NoSuchClass") == "indexer.index.store has no NoSuchClass"


def test_file_names_are_not_taken_for_modules() -> None:
    assert dotted_names("model.pt") == []
    assert dotted_names("python -m benchmarks.quality.retrieval --threads 2") == [
        "benchmarks.quality.retrieval"
    ]
    assert dotted_names("benchmarks/results/indexer.json") == []
