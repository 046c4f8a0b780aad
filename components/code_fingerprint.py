"""Fingerprints of the project code a component runs, so that TFX's cache sees edits.

TFX keys its cache on a component's executor class path, exec properties and
input artifacts (`tfx.orchestration.portable.cache_utils.get_cache_context`),
never on the code behind a class or a dotted function path: after an edit of
`preprocessing_fn`, `run_fn` or an executor, a rerun would silently reuse the
old outputs (tensorflow/tfx#2247). So every component that runs project code
carries a fingerprint of that code as an exec property (`features.CODE_FINGERPRINT_KEY`):
an edit changes the property, hence the component's cache key, and its new
output artifacts change the cache keys of everything downstream.

The fingerprint covers the modules a component names (its executor's module,
or the module of a dotted function path) and every `tfx_captioning` module
they import, transitively, lazy imports inside functions included. Each module
contributes its name and its syntax tree (`ast.dump`), never a file path: the
fingerprint is the same on every machine and checkout with the same Python
version (3.10 here and in the pipeline image), the Kubeflow spec included, and
comments or formatting do not invalidate a cached model.
Third-party libraries are not covered: their versions are pinned by the lock.
"""

import ast
import hashlib
import importlib.util
from typing import Callable, Dict, Iterable, Optional, Set, Tuple

NAMESPACE = 'tfx_captioning'

SourceReader = Callable[[str], Optional[Tuple[str, bool]]]
"""module name -> (source, is_package), or None when no such module exists."""


def _is_package(name: str) -> bool:
    """Whether `name` is a package. Imports only its parents' `__init__` files."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.submodule_search_locations is not None


def module_source(name: str) -> Optional[Tuple[str, bool]]:
    """(source, is_package) of module `name`; None if it is no module (e.g. an attribute).

    Only packages are imported to find it (`importlib.util.find_spec` imports a
    module's parents), never a plain module: fingerprinting does not import
    TensorFlow or whatever else the modules import.
    """
    parent = name.rpartition('.')[0]
    if parent and not _is_package(parent):
        return None  # `from module import name`: an attribute of a plain module
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    is_package = spec.submodule_search_locations is not None
    if not spec.has_location or not (spec.origin or '').endswith('.py'):
        return ('', True) if is_package else None  # a namespace package has no code
    with open(spec.origin, encoding='utf-8') as f:
        return f.read(), is_package


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Set[str]:
    """Every module name (and `from` target) an import statement in `tree` names."""
    package = module if is_package else module.rpartition('.')[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[: len(parts) - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            names.add(base)
            # `from package import module` imports a module; `from module import
            # name` an attribute, which `module_source` does not find.
            names.update(f'{base}.{alias.name}' for alias in node.names)
    return names


def closure(
    roots: Iterable[str], namespace: str = NAMESPACE, read_source: Optional[SourceReader] = None
) -> Dict[str, str]:
    """{module name: source} of `roots` and every `namespace` module they import, transitively.

    Importing a module also runs its parent packages' `__init__`, so those
    count too.

    Raises:
      ValueError: a root is not a module of `namespace`.
    """
    read_source = read_source or module_source
    found: Dict[str, str] = {}
    pending = list(roots)
    for root in pending:
        if not root.startswith(namespace + '.') or read_source(root) is None:
            raise ValueError(f'{root!r} is not a module of {namespace!r}.')
    while pending:
        name = pending.pop()
        if name in found or not (name == namespace or name.startswith(namespace + '.')):
            continue
        read = read_source(name)
        if read is None:
            continue  # an attribute imported with `from module import name`
        source, is_package = read
        found[name] = source
        parent = name.rpartition('.')[0]
        if parent:
            pending.append(parent)
        pending.extend(_imported_names(ast.parse(source), name, is_package))
    return found


def fingerprint(
    *roots: str, namespace: str = NAMESPACE, read_source: Optional[SourceReader] = None
) -> str:
    """A short hex digest of the code of `roots` (module names) and what they import.

    Args:
      *roots: module names, e.g. the executor's module or the module of a
        dotted function path (see `module_of`).
      namespace: only imports of this package are followed.
      read_source: how a module's source is read; `module_source` by default.

    Raises:
      ValueError: no root, or a root that is not a module of `namespace`.
    """
    if not roots:
        raise ValueError('fingerprint needs at least one module.')
    digest = hashlib.sha256()
    for name, source in sorted(closure(roots, namespace, read_source).items()):
        digest.update(name.encode('utf-8') + b'\0')
        digest.update(ast.dump(ast.parse(source)).encode('utf-8') + b'\0')
    return digest.hexdigest()[:20]


def module_of(obj_or_path) -> str:
    """The module of a class or function, or of a dotted path such as 'pkg.mod.fn'."""
    if isinstance(obj_or_path, str):
        return obj_or_path.rpartition('.')[0]
    return obj_or_path.__module__
