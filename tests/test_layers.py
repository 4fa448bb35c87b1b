"""The library's layering, read from its source and checked from outside.

- no import cycle between chatgpt_course modules (absolute, relative and `from . import x` imports, those
  inside functions included), with the cycle named when there is one;
- `os.replace` only in chatgpt_course/files.py (the one atomic write), `argparse` only in the command-line
  modules (cli.py and cli_*.py);
- `chatgpt-course --help`, `chatgpt-course data --help` and `chatgpt-course tokenizer --help` answer without
  importing PyTorch (seen with `python -X importtime`); their wall times are printed, never asserted.
"""
import ast, subprocess, sys, time
from pathlib import Path

import pytest

PKG = "chatgpt_course"
LIB = Path(__file__).resolve().parents[1] / PKG
SCRIPT = Path(sys.executable).with_name("chatgpt-course")


def _modules() -> dict:
    "Dotted module name -> (path, parsed tree) for every .py file of the library."
    out = {}
    for p in sorted(LIB.rglob("*.py")):
        parts = p.relative_to(LIB.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p)))
    return out


def _package_of(name:str, path:Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name:str, path:Path, tree:ast.AST, known:set) -> set:
    "The library modules that module `name` imports, anywhere in its body (functions included)."
    found = set()
    def add(target:str):
        while target and target not in known: target = target.rpartition(".")[0]  # a name inside a module
        if target and target != name: found.add(target)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PKG or a.name.startswith(PKG + "."): add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `.x` or `from . import x`, counted from this module's package
                base = _package_of(name, path).split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else: mod = node.module or ""
            if not (mod == PKG or mod.startswith(PKG + ".")): continue
            for a in node.names:  # `from chatgpt_course import files` imports the module files
                add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
    return found


def _find_cycle(graph:dict) -> list|None:
    "One cycle of `graph` (a list of nodes, the first repeated at the end), or None."
    state, stack = {}, []  # state: 1 while on the current path, 2 when done
    def visit(n):
        state[n] = 1; stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1: return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)): return c
        state[n] = 2; stack.pop()
        return None
    for n in sorted(graph):
        if n not in state and (c := visit(n)): return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_import_parser_reads_every_form():
    src = ("import chatgpt_course.model\nfrom chatgpt_course.core import CourseError\nfrom .files import atomic_write\n"
           "from . import tokenizer\nimport os\ndef f():\n    from chatgpt_course import batches\n    from .. import outside\n")
    known = {"chatgpt_course", "chatgpt_course.model", "chatgpt_course.core", "chatgpt_course.files",
             "chatgpt_course.tokenizer", "chatgpt_course.batches", "chatgpt_course.x"}
    got = _imports("chatgpt_course.x", LIB / "x.py", ast.parse(src), known)
    assert got == {"chatgpt_course.model", "chatgpt_course.core", "chatgpt_course.files", "chatgpt_course.tokenizer",
                   "chatgpt_course.batches"}


def test_no_import_cycles():
    mods = _modules()
    graph = {n: _imports(n, p, t, set(mods)) for n, (p, t) in mods.items()}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _uses(tree:ast.AST, module:str, attr:str|None=None) -> list[int]:
    "Lines of `tree` that import `module` (attr None), or use or import `module.attr`."
    lines = []
    for node in ast.walk(tree):
        if attr is None:
            if isinstance(node, ast.Import) and any(a.name == module or a.name.startswith(module + ".") for a in node.names): lines.append(node.lineno)
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == module: lines.append(node.lineno)
        else:
            if isinstance(node, ast.Attribute) and node.attr == attr and isinstance(node.value, ast.Name) and node.value.id == module: lines.append(node.lineno)
            if isinstance(node, ast.ImportFrom) and node.module == module and any(a.name == attr for a in node.names): lines.append(node.lineno)
    return sorted(lines)


def test_os_replace_only_in_files():
    where = [f"{p.relative_to(LIB.parent)}:{n}" for _, (p, t) in _modules().items() if p.name != "files.py"
             for n in _uses(t, "os", "replace")]
    assert not where, f"os.replace outside chatgpt_course/files.py (use files.atomic_write or atomic_replace): {where}"


def test_argparse_only_in_command_line_modules():
    where = [f"{p.relative_to(LIB.parent)}:{n}" for _, (p, t) in _modules().items()
             if not (p.name == "cli.py" or p.name.startswith("cli_")) for n in _uses(t, "argparse")]
    assert not where, f"argparse outside the command-line modules (cli.py, cli_*.py): {where}"


def _imported_modules(importtime_log:str) -> set:
    "Module names from `python -X importtime`'s report (its last column)."
    return {l.rsplit("|", 1)[-1].strip() for l in importtime_log.splitlines() if l.startswith("import time:") and "|" in l}


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"], ["tokenizer", "--help"]], ids=" ".join)
def test_help_does_not_import_torch(args, capsys):
    # the console script as installed, or the same entry point through -c where it is not installed
    cmd = [str(SCRIPT)] if SCRIPT.exists() else ["-c", "import sys; from chatgpt_course.cli import main; sys.exit(main())"]
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-X", "importtime", *cmd, *args], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t
    with capsys.disabled(): print(f"\n  chatgpt-course {' '.join(args)}: {wall:.2f} s wall (with -X importtime)", end="")
    assert r.returncode == 0, f"chatgpt-course {' '.join(args)} exited {r.returncode}: {r.stdout[-500:]}{r.stderr[-1500:]}"
    assert "usage" in r.stdout.lower()
    torch_mods = sorted(m for m in _imported_modules(r.stderr) if m == "torch" or m.startswith("torch."))
    assert not torch_mods, f"chatgpt-course {' '.join(args)} imported PyTorch ({torch_mods[:3]}...) just to print its help"
