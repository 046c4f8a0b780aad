"""The `fast` tier's rule in conftest names fixtures that exist, so it cannot silently lapse."""

import ast
import pathlib

from tests import conftest

TESTS = pathlib.Path(__file__).parent


def _fixtures_defined() -> set:
    names = set()
    for path in TESTS.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.FunctionDef) and any(
                'fixture' in ast.unparse(decorator) for decorator in node.decorator_list
            ):
                names.add(node.name)
    return names


def test_every_expensive_fixture_is_defined():
    # A renamed expensive fixture would otherwise move its tests into `make test-fast`.
    missing = sorted(conftest.EXPENSIVE_FIXTURES.keys() - _fixtures_defined())
    assert not missing, f'EXPENSIVE_FIXTURES names no fixture called {missing}'


def test_this_test_is_in_the_fast_tier(request):
    assert request.node.get_closest_marker('fast') is not None
