"""The sans-I/O rule, enforced: nothing under proto/ may reach for I/O, a clock or the OS's randomness."""

import ast
from pathlib import Path

import pyagent.proto

BANNED = {"trio", "time", "random", "os", "socket", "asyncio", "threading", "subprocess", "secrets"}
PROTO_DIR = Path(pyagent.proto.__file__).parent


def imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_proto_imports_no_io_clock_or_randomness() -> None:
    files = sorted(PROTO_DIR.rglob("*.py"))
    assert len(files) >= 8
    offenders = {
        str(path.relative_to(PROTO_DIR)): sorted(imported_roots(ast.parse(path.read_text())) & BANNED)
        for path in files
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_the_check_itself_catches_a_banned_import() -> None:
    assert imported_roots(ast.parse("import time\nfrom os import path\nfrom . import x")) == {"time", "os"}
