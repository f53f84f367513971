"""The import graph of src/hybridembed, read from the AST: module-level imports form a DAG and the schemas are leaves.

The rules this file enforces:

1. **Module-level imports form a DAG.** An edge A → B is an import that runs when A is imported: a
   top-level ``import``/``from … import`` (also inside a top-level ``try``/``if``), except those under
   ``if TYPE_CHECKING:``. Importing ``a.b.c`` also runs the package ``a/b/__init__.py``, so that is an
   edge too, except towards the importer's own packages (Python has already started those). A cycle
   here breaks as soon as the "wrong" module of it is imported first.
2. **Function-local imports are deferred, not free.** They are how heavy packages (torch, mteb) load
   only when needed, and runtime modules may use them both ways. But no cycle of the whole graph
   (module-level + function-local + ``TYPE_CHECKING`` edges) may run through a schema module: a schema
   imports only other leaves (stdlib, pydantic, yaml, `errors`, `tasks`, other schemas), wherever the
   import sits, so runtime code depends on schemas and never the other way round.
3. **Schemas import nothing heavy**, even transitively at module level (package ``__init__``s included):
   checked on the graph and by importing each schema in a fresh interpreter and reading ``sys.modules``.
4. **Every module imports on its own**: a fresh interpreter preloads the third-party packages, then for
   each module in topological order a forked child (no hybridembed module loaded yet) imports just that
   module; the first failure in that order is the root cause, not one of its dependents.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "hybridembed"

# The plain validated settings a run is described by (rule 2 and 3).
SCHEMAS = (
    "hybridembed.schema",
    "hybridembed.recipe",
    "hybridembed.evaluation.config",
    "hybridembed.evaluation.suite",
    "hybridembed.mining.config",
    "hybridembed.serve.settings",
    "hybridembed.synthesize.config",
)
# hybridembed modules a schema may import besides other schemas: they import only the standard library.
LEAVES = ("hybridembed.errors", "hybridembed.tasks")
# Third-party packages a schema may import directly.
LIGHT = {"pydantic", "yaml", "typing_extensions"}
# Packages no schema may pull in, however indirectly, at module level.
HEAVY = {
    "torch", "transformers", "sentence_transformers", "datasets", "mteb", "peft", "accelerate", "faiss",
    "deepspeed", "onnx", "onnxruntime", "fastapi", "uvicorn", "pandas", "pyarrow", "sklearn", "scipy",
    "matplotlib", "tensorboard", "numpy",
}  # fmt: skip
# Deferred imports from a schema into runtime code that are allowed for now, each with its way out.
TEMPORARY: set[tuple[str, str]] = set()  # (module, import) pairs allowed for now; keep it empty


def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is a package)} of every module under src/hybridembed."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _imports(name: str) -> list[tuple[str, str]]:
    """(imported name, where: module / local / typing) of every import statement of module `name`, absolute."""
    path, is_package = MODULES[name]
    package = name if is_package else name.rpartition(".")[0]
    found: list[tuple[str, str]] = []

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), where)
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "local" if where == "module" else where)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, where) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = absolute(child)
                for alias in child.names:
                    # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg/__init__.
                    found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, where))
            visit(child, where)

    visit(ast.parse(path.read_text(encoding="utf-8")), "module")
    return found


def _edges(name: str, kinds: tuple[str, ...]) -> set[str]:
    """hybridembed modules that importing `name` runs (through imports of the given kinds), package inits included."""
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    if MODULES[name][1]:
        own_packages.add(name)
    targets = set()
    for imported, where in _imports(name):
        if where not in kinds or imported.split(".")[0] != PACKAGE:
            continue
        parts = imported.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            # the target and the packages above it; the importer's own packages only when named themselves
            if prefix in MODULES and (prefix not in own_packages or prefix == imported):
                targets.add(prefix)
    targets.discard(name)
    return targets


def _third_party(name: str, kinds: tuple[str, ...]) -> set[str]:
    return {imported.split(".")[0] for imported, where in _imports(name) if where in kinds and imported.split(".")[0] != PACKAGE}


def _graph(kinds: tuple[str, ...]) -> dict[str, set[str]]:
    return {name: _edges(name, kinds) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def _topological(graph: dict[str, set[str]]) -> list[str]:
    """Dependencies first (ties by name)."""
    order: list[str] = []
    done: set[str] = set()

    def place(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for dep in sorted(graph[name]):
            place(dep)
        order.append(name)

    for name in sorted(graph):
        place(name)
    return order


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


MODULE_LEVEL = ("module",)


def test_the_schemas_named_here_exist():
    assert set(SCHEMAS) | set(LEAVES) <= set(MODULES)


def test_module_level_imports_form_a_dag():
    cycles = _cycles(_graph(MODULE_LEVEL))
    assert not cycles, f"module-level import cycles: {cycles}"


def _ancestors(name: str) -> set[str]:
    return {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}


def _runtime_imports_of_schemas() -> dict[str, list[str]]:
    """{schema or leaf: the runtime modules it imports, wherever the import sits}; packages an import only passes
    through run just their module level, which rule 3 and the DAG test cover."""
    found = {}
    for name in (*SCHEMAS, *LEAVES):
        targets = {t for t in _edges(name, ("module", "local")) if (name, t) not in TEMPORARY}
        runtime = sorted(t for t in targets if t not in SCHEMAS and t not in LEAVES and not MODULES[t][1])
        if runtime:
            found[name] = runtime
    return found


def test_schemas_and_leaves_import_no_runtime_module_wherever_the_import_sits():
    """Rule 2: runtime code depends on schemas, never the other way round, so no cycle (deferred or not) runs through one."""
    found = _runtime_imports_of_schemas()
    assert not found, f"schemas importing runtime modules: {found}"


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_schema_imports_only_the_standard_library_pydantic_and_yaml_wherever_the_import_sits(schema):
    third_party = _third_party(schema, ("module", "local")) - set(sys.stdlib_module_names) - LIGHT - {"__future__"}
    assert not third_party, f"{schema} imports {sorted(third_party)}"


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_schema_pulls_in_nothing_heavy_at_module_level(schema):
    graph = _graph(MODULE_LEVEL)
    reached = _closure(graph, schema) | _ancestors(schema)
    for package in list(reached):  # the packages above a module run first
        reached |= _closure(graph, package)
    heavy = {module: sorted(_third_party(module, MODULE_LEVEL) & HEAVY) for module in sorted(reached)}
    heavy = {module: found for module, found in heavy.items() if found}
    assert not heavy, f"importing {schema} imports {heavy}"


def test_schemas_load_no_heavy_package_in_a_fresh_interpreter():
    code = textwrap.dedent(f"""
        import importlib, json, sys
        for name in {list(SCHEMAS)!r}:
            importlib.import_module(name)
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(HEAVY)!r}))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parent)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="forks one child per module")
def test_every_module_imports_on_its_own_in_topological_order():
    graph = _graph(MODULE_LEVEL)
    assert not _cycles(graph), "a cycle has no topological order (test_module_level_imports_form_a_dag)"
    order = _topological(graph)
    third_party = sorted({top for name in MODULES for top in _third_party(name, MODULE_LEVEL)} - {"__future__"})
    code = textwrap.dedent(f"""
        import importlib, os, sys, traceback
        for top in {third_party!r}:  # once here, not once per child: the children then only run hybridembed code
            try:
                importlib.import_module(top)
            except ImportError:
                pass  # an optional extra (onnx); the child that needs it reports it
        assert not [m for m in sys.modules if m == {PACKAGE!r} or m.startswith({PACKAGE + "."!r})]
        for name in {order!r}:
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    sys.stdout.write("FAILED " + name + "\\n" + traceback.format_exc())
                    sys.stdout.flush()
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if status:
                sys.exit(1)
        print("ok", len({order!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SRC.parent, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert out.stdout.strip().endswith(f"ok {len(order)}")


# Lower layers never import these, at module level or inside a function (type-only imports are allowed).
LAYERS = {
    "hybridembed.losses": ("hybridembed.training",),
    "hybridembed.data": ("hybridembed.training",),
    "hybridembed.mining": ("hybridembed.training",),
    "hybridembed.modeling": ("hybridembed.training", "hybridembed.serve", "hybridembed.evaluation", "hybridembed.mining"),
    "hybridembed.distributed": ("hybridembed.training",),
}


def test_imports_run_one_way_between_the_layers():
    """losses/, data/ and mining/ do not import training/ (the builder hands them what they need); modeling/ imports no runtime layer above it."""
    found = {}
    for name in MODULES:
        banned = next((b for layer, b in LAYERS.items() if name == layer or name.startswith(layer + ".")), ())
        bad = sorted(t for t in _edges(name, ("module", "local")) if any(t == b or t.startswith(b + ".") for b in banned))
        if bad:
            found[name] = bad
    assert not found, found
