"""The layers import downwards only and nothing imports in a cycle (ARCHITECTURE.md): models know
nothing of grammars, grammars nothing of search, search nothing of executors, the server or
`generate`. Every import counts, module-level or inside a function, except those under
`if TYPE_CHECKING:` (type hints only)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "searchdec"

# Lowest first: a module may import its own layer or a lower one.
LAYERS = [
    ("searchdec.errors", "searchdec.version"),
    ("searchdec.models",),
    ("searchdec.grammars",),
    ("searchdec.rewards",),
    ("searchdec.search",),
    ("searchdec.distributed",),
    ("searchdec.requests", "searchdec.generate", "searchdec.hf"),
    ("searchdec.server",),
    ("searchdec.cli", "searchdec.__main__", "searchdec", "searchdec.bench"),
]


def _layer(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("searchdec"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("searchdec"):
            found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_there_are_no_import_cycles():
    graph = _graph()
    modules = set(graph)

    def resolve(target: str) -> str | None:  # `from searchdec.search import x` is the package's __init__
        return target if target in modules else None

    edges = {m: {t for t in (resolve(x) for x in targets) if t and t != m} for m, targets in graph.items()}
    # a package's __init__ re-exporting its modules is not a cycle of those modules
    for m in list(edges):
        edges[m] = {t for t in edges[m] if not (m.startswith(t + ".") and t in modules)}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
