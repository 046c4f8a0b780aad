"""The package layers only import downward, nothing imports tests, and nothing generic is installed.

Layers, lowest first (`setup.LAYERS`): models < components < pipeline < the
applications (cli, serving, kubeflow, benchmarks). The serving runtime may not
import the pipeline either, so a server image needs no TFX pipeline code.
Every module-level and function-level import is read with `ast`, so a lazy
import inside a function counts too.
"""

import ast
import importlib.util
import os
import subprocess
import sys
from typing import Dict, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = 'tfx_captioning'
RANK = {'models': 0, 'components': 1, 'pipeline': 2, 'cli': 3, 'serving': 3, 'kubeflow': 3}
FOLDERS = tuple(RANK) + ('benchmarks',)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len('.py')].replace(os.sep, '.')
    return rel[: -len('.__init__')] if rel.endswith('.__init__') else rel


def _imports(path: str, module: str) -> Set[str]:
    """Project modules `path` imports, as repository module names (no namespace prefix)."""
    tree = ast.parse(open(path, encoding='utf-8').read())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                package = module.split('.')[: -node.level]
                base = '.'.join(package + ([base] if base else []))
            names = [base] + [f'{base}.{alias.name}' for alias in node.names]
        for name in names:
            parts = name.split('.')
            if parts[0] == NAMESPACE:
                parts = parts[1:]
            elif parts[0] in RANK:
                # A bare `import models...` would only work from the repository root.
                found.add('BARE:' + name)
                continue
            if parts and parts[0] in FOLDERS + ('tests',):
                found.add('.'.join(parts))
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = {}
    for folder in FOLDERS:
        for directory, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith('.py'):
                    path = os.path.join(directory, name)
                    modules[_module_name(path)] = path
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path, module):
            if name.startswith('BARE:') or name.split('.')[0] == 'tests':
                targets.add(name)
                continue
            while name and name not in modules:
                name = name.rpartition('.')[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _rank(module: str) -> int:
    return RANK.get(module.split('.')[0], 4)


def test_no_bare_imports_and_nothing_imports_tests():
    bad = sorted(
        f'{module} -> {target}'
        for module, targets in _graph().items()
        for target in targets
        if target.startswith('BARE:') or target.split('.')[0] == 'tests'
    )
    assert bad == []


def test_every_import_points_down_the_layers():
    graph = _graph()
    upward = sorted(
        f'{module} -> {target}'
        for module, targets in graph.items()
        for target in targets
        if not target.startswith('BARE:')
        and target.split('.')[0] != 'tests'
        and (
            _rank(target) > _rank(module)
            or (module.startswith('serving') and target.split('.')[0] in ('pipeline', 'cli'))
        )
    )
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    # Depth-first search for a back edge; reports the first cycle found.
    state: Dict[str, int] = {}
    stack = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, ' -> '.join(cycle)


def test_the_checker_sees_a_planted_upward_edge(tmp_path):
    """The rules above can fail: an import of the pipeline from models is found."""
    planted = tmp_path / 'planted.py'
    planted.write_text('from tfx_captioning.pipeline import configs\nimport models.features\n')
    found = _imports(str(planted), 'models.planted')
    assert 'pipeline.configs' in found and 'BARE:models.features' in found
    assert _rank('pipeline.configs') > _rank('models.planted')


def test_no_generic_top_level_package_is_importable_outside_the_repository(tmp_path):
    """After `make install`, only `tfx_captioning` is installed: no `kubeflow`, `models`, ..."""
    code = (
        'import importlib.util, json\n'
        "names = ['kubeflow', 'models', 'pipeline', 'serving', 'components', 'cli']\n"
        'print(json.dumps({n: getattr(importlib.util.find_spec(n), "origin", None) '
        'for n in names}))\n'
        'import tfx_captioning.models.features as f; print(f.MODEL_NAME)\n'
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    found, model_name = out.stdout.strip().splitlines()
    for name, origin in __import__('json').loads(found).items():
        assert origin is None or not origin.startswith(REPO), (name, origin)
    assert model_name == 'captioner'


@pytest.mark.parametrize('module', ['tfx_captioning.models.tflite_runtime'])
def test_the_on_device_runtime_imports_without_tensorflow(module):
    code = (
        f'import sys, {module}\n'
        "assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)\n"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert importlib.util.find_spec(module) is not None
