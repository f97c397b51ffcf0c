"""The shape of the code: MPI and the database stay in the driver, no import cycles,
SQL text only in the database layer and the ledger."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TREX = Path(__file__).resolve().parent.parent / "trex"
#: modules allowed to import trex.parallel / trex.db: the driver, the CLI, the database
#: layer and the ledger (the benchmarks drive the pieces themselves)
DRIVER = {"trex.pipeline", "trex.cli", "trex.ledger", "trex.db", "trex.db.queries",
          "trex.parallel"}
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|CREATE\s+TABLE)\b",
                 re.IGNORECASE)


def modules() -> dict[str, Path]:
    out = {}
    for path in TREX.rglob("*.py"):
        parts = path.relative_to(TREX.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """trex modules imported anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_only_the_driver_imports_mpi_and_the_database():
    mods = modules()
    graph = {name: imports(path, set(mods)) for name, path in mods.items()}
    offenders = {name: sorted(deps & {"trex.parallel", "trex.db", "trex.db.queries"})
                 for name, deps in graph.items()
                 if name not in DRIVER and not name.startswith("trex.bench")
                 and deps & {"trex.parallel", "trex.db", "trex.db.queries"}}
    assert offenders == {}
    mpi = [name for name, path in mods.items() if "mpi4py" in path.read_text()
           and name != "trex.parallel"]
    assert mpi == []


def test_no_import_cycles():
    mods = modules()
    graph = {name: imports(path, set(mods)) - {name} for name, path in mods.items()}
    # a package's __init__ is imported with any of its modules: count it as a plain module
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif not state.get(dep):
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(graph):
        if not state.get(name):
            visit(name, [name])
    cycles = [c for c in cycles if not any(m.startswith("trex.bench") for m in c)
              and not (len(c) == 3 and c[0] == c[-1] and c[1].startswith(c[0] + "."))]
    assert cycles == []


def test_sql_text_only_in_the_database_layer_and_the_ledger():
    holders = sorted(name for name, path in modules().items()
                     if SQL.search(path.read_text()) and not name.startswith("trex.bench"))
    assert holders == ["trex.db", "trex.db.queries", "trex.ledger"]
