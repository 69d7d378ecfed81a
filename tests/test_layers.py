"""The packages stand in layers, read from the source (every import, function-local ones included):

    base        arlm's data, quantizers, judge, synth, config, checkpoint, parallel, ... (any module not below)
    models      arlm.tokenizer and arlm.transformer, each importing nothing of the other
    generation  arlm.generation: what applies the models (sampler, sample -> decode -> judge, rewards, ...)
    training    arlm.training: the trainer and its stages
    cli         the `arimg` command (cli/, installed as the package `arimg`)

A module imports only from its own layer and the layers under it, and no chain of imports comes back to
where it started."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("base", "models", "generation", "training", "cli")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "arlm").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "cli").glob("*.py")):
        name = path.stem
        found["arimg" if name == "__init__" else f"arimg.{name}"] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (its longest prefix that is one), or None for another package."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str) -> set[str]:
    """The project modules `module` imports, anywhere in its file."""
    out = set()
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names = [f"{base}.{a.name}" for a in node.names] + [base]  # `from arlm import checkpoint`: a module
        for n in names:
            target = _resolve(n)
            if target is not None and target != module and not (target == "arlm" or target == "arimg"):
                out.add(target)
    return out


def layer(module: str) -> str:
    if module.startswith("arimg"):
        return "cli"
    for prefix, name in (("arlm.tokenizer", "models"), ("arlm.transformer", "models"),
                         ("arlm.generation", "generation"), ("arlm.training", "training")):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "base"


GRAPH = {m: imports(m) for m in MODULES}


def test_the_walker_sees_the_packages_and_their_imports():
    assert {layer(m) for m in MODULES} == set(LAYERS)
    assert "arlm.transformer.model" in GRAPH["arlm.transformer.sequence"] or \
        "arlm.transformer.sequence" in GRAPH["arlm.transformer.ckpt"]
    assert "arlm.tokenizer.model" in GRAPH["arlm.tokenizer.codec"]


def test_every_module_imports_only_from_its_layer_and_the_ones_under_it():
    wrong = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, ts in GRAPH.items() for t in sorted(ts)
             if LAYERS.index(layer(t)) > LAYERS.index(layer(m))]
    assert not wrong, "\n".join(wrong)


def test_the_tokenizer_and_the_transformer_import_nothing_of_each_other():
    def side(m):
        return m.split(".")[1] if layer(m) == "models" else None

    crossing = [f"{m} imports {t}" for m, ts in GRAPH.items() for t in sorted(ts)
                if side(m) and side(t) and side(m) != side(t)]
    assert not crossing, "\n".join(crossing)


def test_no_import_comes_back_to_where_it_started():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            circle = visit(m)
            assert circle is None, " -> ".join(circle)


def test_no_function_of_arlm_runs_over_80_lines():
    """A function that reads on one screen (the trainer's loop included)."""
    long = [f"{m}.{n.name}: {n.end_lineno - n.lineno + 1} lines" for m, path in MODULES.items() if m.startswith("arlm")
            for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 80]
    assert not long, "\n".join(long)
