"""`--help` and usage errors of every console script answer without importing TensorFlow.

Each script's module is run in a fresh interpreter, exactly as its console
entry point calls it; the check is that `tensorflow` (and TFX, Beam) are not
in `sys.modules` afterwards, not a time bound.
"""

import importlib.metadata
import subprocess
import sys

import pytest

HEAVY = ('tensorflow', 'tfx', 'apache_beam')

SCRIPTS = sorted(
    (entry.name, entry.value)
    for entry in importlib.metadata.entry_points(group='console_scripts')
    if entry.value.startswith('tfx_captioning.')
)

# Help screens and usage errors (argparse exits 2) beyond the top-level `--help`.
EXTRA_ARGVS = {
    'caption-pipeline': [
        ['run', '--help'],
        ['caption', '--help'],
        ['caption'],
        ['run', '--beam-workers', '0'],
    ],
    'caption-data': [['download', '--help'], ['download'], []],
    'caption-client': [[]],
    'caption-server': [['--port', 'eighty']],
    'caption-tflite': [['model.tflite']],
}


def test_every_console_script_of_setup_py_is_covered():
    assert {name for name, _ in SCRIPTS} == {
        'caption-pipeline',
        'caption-data',
        'caption-client',
        'caption-server',
        'caption-tflite',
        'caption-kfp',
    }


@pytest.mark.parametrize('name,target', SCRIPTS, ids=[name for name, _ in SCRIPTS])
def test_help_and_usage_errors_do_not_import_tensorflow(name, target):
    module, function = target.split(':')
    argvs = [['--help'], ['--no-such-flag']] + EXTRA_ARGVS.get(name, [])
    expected = [0 if '--help' in argv else 2 for argv in argvs]
    code = (
        'import sys\n'
        f'from {module} import {function} as main\n'
        'codes = []\n'
        f'for argv in {argvs!r}:\n'
        '    try:\n'
        '        codes.append(main(argv))\n'
        '    except SystemExit as exit:\n'
        '        codes.append(exit.code)\n'
        f'heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})\n'
        'assert not heavy, heavy[:5]\n'
        f'assert codes == {expected!r}, codes\n'
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith('usage:')  # the help text itself
