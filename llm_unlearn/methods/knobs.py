"""A built-in method's knob dataclass, read from its file without importing the file.

A method file holds its knob dataclass beside its trainer and registers both, ``@register_method("ngd",
config=NGDConfig)``; importing the file imports transformers' ``Trainer`` and torch (seconds). To refuse a bad
``method_args`` or grid value before that, :func:`read_knobs` parses ``llm_unlearn/methods/<name>.py``, finds the class
its registration names as ``config``, and executes only the top-level statements that class needs: the class
itself, then, transitively, the module-level constants, functions and imports its body reads (``math``,
``ConfigError``, a help text). A name imported from a sibling method file (``from .graddiff import
check_forget_retain``) is read from that file the same way. The statements run are the file's own, so the class is the
same definition (fields, defaults, help, ``validate()``) as the one the import registers; nothing is copied into a
table that could drift.

Only the standard library and ``llm_unlearn`` modules outside ``llm_unlearn.methods`` may be imported on the way; a
knob class that needs anything else (torch, numpy...) raises :class:`NotReadable`, and the caller imports the method
instead (correct, only slower). ``tests/test_fast_config_errors.py`` checks every built-in is readable, agrees with the
registered class and loads neither torch nor transformers.
"""

from __future__ import annotations

import __future__
import ast
import functools
import sys
import types
from pathlib import Path

PACKAGE = __name__.rpartition(".")[0]  # llm_unlearn.methods
ROOT = PACKAGE.partition(".")[0]  # llm_unlearn
HERE = Path(__file__).resolve().parent


class NotReadable(Exception):
    """The knob class cannot be read without importing its method file (the reason says why)."""


@functools.cache
def read_knobs(name: str) -> type:
    """The knob dataclass that ``llm_unlearn/methods/<name>.py`` registers for method ``name``."""
    source = _Source.of(name)
    config = source.registered_config(name)
    return source.load({config})[config]


class _Source:
    """One method file: its top-level statements, what each binds and reads, and the module they are run into (a
    private ``llm_unlearn.methods._knobs_of_<name>`` in ``sys.modules``, where dataclasses and typing.get_type_hints
    look up the names of string annotations; never the method's own module name, which its real import takes)."""

    @staticmethod
    @functools.cache
    def of(stem: str) -> _Source:
        path = HERE / f"{stem}.py"
        if not stem.isidentifier() or not path.is_file():
            raise NotReadable(f"no method file {path}")
        return _Source(stem, path)

    def __init__(self, stem: str, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), str(path))
        body = self.tree.body
        self.flags = 0  # the file's future imports, for the statements compiled one by one
        for stmt in body:
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                for alias in stmt.names:
                    self.flags |= getattr(__future__, alias.name).compiler_flag
        # Under ``from __future__ import annotations`` a function's annotations are never evaluated: not needed.
        lazy = bool(self.flags & __future__.annotations.compiler_flag)
        self.binds = [_bound_names(s) for s in body]
        self.reads = [_read_names(s, lazy) for s in body]
        self.done: dict[int, set[str]] = {}  # statement index -> the names it has bound in self.module
        self.module = types.ModuleType(f"{PACKAGE}._knobs_of_{stem}")
        self.module.__package__, self.module.__file__ = PACKAGE, str(path)
        sys.modules[self.module.__name__] = self.module

    def registered_config(self, method: str) -> str:
        """The name of the class passed as ``config`` to ``@register_method(method, ...)`` in this file."""
        for stmt in self.tree.body:
            for deco in getattr(stmt, "decorator_list", []):
                if not (isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register_method"):
                    continue
                first = deco.args[0] if deco.args else None
                if not (isinstance(first, ast.Constant) and first.value == method):
                    continue
                config = [k.value for k in deco.keywords if k.arg == "config"] or deco.args[1:2]
                if config and isinstance(config[0], ast.Name):
                    return config[0].id
                raise NotReadable(f"{self.path.name}: register_method({method!r}) names no config class by name")
        raise NotReadable(f"{self.path.name} has no @register_method({method!r}, config=...)")

    def load(self, wanted: set[str]) -> dict:
        """Run the statements that bind ``wanted`` and, transitively, what they read, in file order (an import only
        for the names needed), unless already run; returns the module's namespace."""
        needed: dict[int, set[str]] = {}  # statement index -> the names it must bind
        todo = list(wanted)
        while todo:
            name = todo.pop()
            for i, binds in enumerate(self.binds):
                if name in binds and name not in needed.setdefault(i, set()):
                    needed[i].add(name)
                    todo += self.reads[i]
        missing = sorted(n for n in wanted if not any(n in names for names in needed.values()))
        if missing:
            raise NotReadable(f"{self.path.name} defines no {missing} at the top level")
        namespace = self.module.__dict__
        for i in sorted(needed):
            names = needed[i] - self.done.get(i, set())
            if not names:
                continue
            stmt = self.tree.body[i]
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                aliases = [a for a in stmt.names if (a.asname or a.name).partition(".")[0] in names]
                if isinstance(stmt, ast.ImportFrom) and stmt.level == 1:  # a sibling method file: read, not imported
                    sibling = _Source.of(stmt.module or "").load({a.name for a in aliases})
                    namespace.update({a.asname or a.name: sibling[a.name] for a in aliases})
                    self.done.setdefault(i, set()).update(names)
                    continue
                stmt = _light_import(stmt, aliases, self.path.name)
            else:
                names = self.binds[i]  # the whole statement runs: all it binds
            code = compile(ast.Module(body=[stmt], type_ignores=[]), str(self.path), "exec", self.flags, True)
            exec(code, namespace)
            self.done.setdefault(i, set()).update(names)
        return namespace


def _light_import(stmt: ast.Import | ast.ImportFrom, aliases: list[ast.alias], where: str) -> ast.stmt:
    """``stmt`` cut to ``aliases``, if it imports only the standard library or ``llm_unlearn`` outside the methods."""
    if isinstance(stmt, ast.Import):
        modules, out = [a.name for a in aliases], ast.Import(names=aliases)
    else:  # relative: level 2 is llm_unlearn (level 1, a sibling method file, is read instead, never imported)
        prefix = {0: "", 2: f"{ROOT}."}.get(stmt.level, "?.")
        modules = [prefix + (stmt.module or "")]
        out = ast.ImportFrom(module=stmt.module, names=aliases, level=stmt.level)
    for module in modules:
        top = module.partition(".")[0]
        own = top == ROOT and not (module + ".").startswith(PACKAGE + ".")
        if not (own or top == "__future__" or top in sys.stdlib_module_names):
            raise NotReadable(f"{where}: its knob class needs `{ast.unparse(stmt)}`, not a light import")
    return ast.fix_missing_locations(ast.copy_location(out, stmt))


def _bound_names(stmt: ast.stmt) -> set[str]:
    """The module-level names a top-level statement binds."""
    if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).partition(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return set()  # if/try blocks and expressions: a knob class never needs what they bind


def _read_names(stmt: ast.stmt, lazy_annotations: bool) -> set[str]:
    """The names a top-level statement reads (loads), minus function annotations when they are never evaluated."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            out.add(node.id)
        if lazy_annotations and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults, *node.body]:
                if child is not None:  # kw_defaults holds None for a keyword-only argument without a default
                    visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(stmt)
    return out
