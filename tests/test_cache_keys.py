"""What TFX's cache key sees: code fingerprints and the ExampleGen's input fingerprint.

The end-to-end proof (which components re-run after an edit, read from ML
Metadata) is in test_runs.py; these tests pin down the two fingerprints on
real files: a tiny package written to a temporary directory, and a generated
Flickr8k layout.
"""

import json
import os
import shutil
import sys
import textwrap
import uuid

import pytest
from tfx.components.example_gen import utils as example_gen_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from tfx_captioning.cli import sample_data
from tfx_captioning.components import code_fingerprint
from tfx_captioning.components.caption_pusher.spec import PusherParameters
from tfx_captioning.components.flickr8k_example_gen import component as example_gen_component
from tfx_captioning.components.flickr8k_example_gen import driver, layout
from tfx_captioning.models import features
from tfx_captioning.models.hparams import HParams
from tfx_captioning.pipeline import pipeline as pipeline_lib

# --- Code fingerprints on a throwaway package ---------------------------------------------

ROOT_MODULE = '''
"""Runs b, and c only inside a function."""
from {pkg} import b
from {pkg}.b import helper


def run():
    import {pkg}.sub.c as c  # a lazy import counts too
    return helper() + c.VALUE
'''
FILES = {
    '__init__.py': '',
    'a.py': ROOT_MODULE,
    'b.py': 'def helper():\n    return 1\n',
    'sub/__init__.py': '',
    'sub/c.py': 'from .. import b  # a relative import\n\nVALUE = 2\n',
    'unrelated.py': 'X = 3\n',
}


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A fresh package (unique name, so no import cache interferes) and a writer for its files."""
    name = f'fp_{uuid.uuid4().hex[:8]}'

    def write(relative, text, root=tmp_path):
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).format(pkg=name))

    for relative, text in FILES.items():
        write(relative, text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, write
    for module in [m for m in sys.modules if m == name or m.startswith(name + '.')]:
        del sys.modules[module]


def _fingerprint(name):
    return code_fingerprint.fingerprint(f'{name}.a', namespace=name)


def test_closure_follows_imports_transitively_lazy_ones_included(package):
    name, _ = package
    found = code_fingerprint.closure([f'{name}.a'], namespace=name)
    assert sorted(found) == [name, f'{name}.a', f'{name}.b', f'{name}.sub', f'{name}.sub.c']
    # Found by reading files: of the package only the `__init__` files are imported.
    assert f'{name}.a' not in sys.modules and f'{name}.b' not in sys.modules


def test_an_edit_of_an_imported_module_changes_the_fingerprint(package):
    name, write = package
    before = _fingerprint(name)
    write('sub/c.py', 'from .. import b\n\nVALUE = 20\n')
    after_c = _fingerprint(name)
    write('b.py', 'def helper():\n    return 2\n')
    assert len({before, after_c, _fingerprint(name)}) == 3


def test_unrelated_modules_comments_and_formatting_do_not(package):
    name, write = package
    before = _fingerprint(name)
    write('unrelated.py', 'X = 4\n')
    write('b.py', '# a comment\ndef helper( ):\n\n    return (1)  # same code\n')
    assert _fingerprint(name) == before


def test_the_fingerprint_does_not_depend_on_where_the_code_lives(package, tmp_path, monkeypatch):
    name, _ = package
    here = _fingerprint(name)
    for module in [m for m in sys.modules if m == name or m.startswith(name + '.')]:
        del sys.modules[module]
    elsewhere = tmp_path / 'elsewhere'
    shutil.copytree(tmp_path / name, elsewhere / name)
    shutil.rmtree(tmp_path / name)
    monkeypatch.syspath_prepend(str(elsewhere))
    import importlib

    importlib.invalidate_caches()
    assert code_fingerprint.closure([f'{name}.a'], namespace=name)
    assert _fingerprint(name) == here


def test_a_root_that_is_not_a_module_of_the_namespace_is_refused(package):
    name, _ = package
    with pytest.raises(ValueError, match='not a module'):
        code_fingerprint.fingerprint(f'{name}.missing', namespace=name)
    with pytest.raises(ValueError, match='not a module'):
        code_fingerprint.fingerprint('json.decoder', namespace=name)


# --- The project's components --------------------------------------------------------------


def test_the_extractor_does_not_run_preprocessing_fn_code_but_transform_does():
    transform = code_fingerprint.closure(
        [code_fingerprint.module_of(pipeline_lib.PREPROCESSING_FN)]
    )
    extractor = code_fingerprint.closure(
        ['tfx_captioning.components.image_feature_extractor.executor']
    )
    assert 'tfx_captioning.models.preprocessing' in transform
    assert 'tfx_captioning.models.preprocessing' not in extractor
    assert 'tfx_captioning.models.features' in extractor  # shared names count for both


def _pipeline(**kwargs):
    return pipeline_lib.create_pipeline(
        'p', '/root', '/data', PusherParameters(serving_root='/srv', tflite_root='/tfl'), **kwargs
    )


def _code_fingerprints(pipeline):
    """{component id: its code fingerprint}, wherever TFX's cache key sees it."""
    found = {}
    for component in pipeline.components:
        props = component.exec_properties
        if features.CODE_FINGERPRINT_KEY in props:
            found[component.id] = props[features.CODE_FINGERPRINT_KEY]
        elif isinstance(props.get('custom_config'), str):
            config = json.loads(props['custom_config'])
            config = config.get('custom_config', {}).get('value', config)  # ExampleGen's Any
            if features.CODE_FINGERPRINT_KEY in (config or {}):
                found[component.id] = config[features.CODE_FINGERPRINT_KEY]
    return found


def test_every_component_running_project_code_carries_its_fingerprint():
    found = _code_fingerprints(_pipeline())
    assert set(found) == {
        'Flickr8kExampleGen',
        'ImageFeatureExtractor',
        'Transform',
        'Trainer',
        'CaptionEvaluator',
        'CaptionPusher',
    }
    assert all(len(value) == 20 and os.sep not in value for value in found.values())


def test_editing_preprocessing_fn_changes_only_the_fingerprints_of_code_that_imports_it(
    monkeypatch,
):
    before = _code_fingerprints(_pipeline())
    real = code_fingerprint.module_source

    def edited(name):
        read = real(name)
        if name == 'tfx_captioning.models.preprocessing':
            return read[0].replace(
                'def preprocessing_fn(', 'EDITED = 1\n\n\ndef preprocessing_fn('
            ), read[1]
        return read

    monkeypatch.setattr(code_fingerprint, 'module_source', edited)
    after = _code_fingerprints(_pipeline())
    changed = {name for name in before if before[name] != after[name]}
    # The evaluator normalises reference captions with preprocessing's function.
    assert changed == {'Transform', 'CaptionEvaluator'}


def test_hparams_ignore_the_fingerprint_but_still_refuse_typos():
    config = {**HParams().transform_config(), features.CODE_FINGERPRINT_KEY: 'abc'}
    assert HParams.from_custom_config(config) == HParams()
    with pytest.raises(ValueError, match='Unknown hyperparameters'):
        HParams.from_custom_config({'code_fingerprnt': 'abc'})


# --- The ExampleGen's input fingerprint ----------------------------------------------------


@pytest.fixture
def layout_dir(tmp_path):
    root = tmp_path / 'flickr8k'
    sample_data.generate(str(root), 8, seed=3)
    return root


def _resolved_fingerprint(root) -> str:
    """The `input_fingerprint` exec property the driver resolves (and TFX's cache key hashes)."""
    exec_properties = {
        standard_component_specs.INPUT_BASE_KEY: str(root),
        standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(
            example_gen_component.make_input_config()
        ),
    }
    resolved = driver.Flickr8kDriver(None).resolve_exec_properties(exec_properties, None, None)
    return resolved[example_gen_utils.FINGERPRINT_PROPERTY_NAME]


def test_input_fingerprint_keeps_tfxs_and_names_no_path(layout_dir):
    fingerprint = _resolved_fingerprint(layout_dir)
    assert fingerprint.startswith('split:train,num_files:1,')  # TFX's own, first
    assert 'images:num_files=8,' in fingerprint
    assert str(layout_dir) not in fingerprint
    assert _resolved_fingerprint(layout_dir) == fingerprint  # nothing changed


def test_an_edited_caption_changes_it_even_with_the_same_length_and_second(layout_dir):
    before = _resolved_fingerprint(layout_dir)
    token_file = layout_dir / layout.TOKEN_FILE
    stat = os.stat(token_file)
    text = token_file.read_text()
    edited = text.replace('circle', 'CIRCLE', 1)
    assert edited != text and len(edited) == len(text)
    token_file.write_text(edited)
    os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime, same size
    assert _resolved_fingerprint(layout_dir) != before


def test_a_replaced_added_or_removed_image_changes_it(layout_dir):
    images = sorted((layout_dir / layout.IMAGES_DIR).iterdir())
    seen = {_resolved_fingerprint(layout_dir)}
    os.utime(images[0], ns=(0, images[0].stat().st_mtime_ns + 1))  # replaced in place
    seen.add(_resolved_fingerprint(layout_dir))
    shutil.copy(images[1], layout_dir / layout.IMAGES_DIR / 'extra.jpg')
    seen.add(_resolved_fingerprint(layout_dir))
    images[2].unlink()
    seen.add(_resolved_fingerprint(layout_dir))
    assert len(seen) == 4
