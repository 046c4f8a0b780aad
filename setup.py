"""Installs the captioning pipeline as one namespace, `tfx_captioning`, and its console scripts.

The repository keeps the folders a TFX project is expected to have
(`models/`, `components/`, `pipeline/`, `serving/`, `kubeflow/`, `cli/`); they are
installed as `tfx_captioning.models`, `tfx_captioning.components`, ... so that
nothing generic (`models`, `pipeline`, `serving`, and above all `kubeflow`, the
namespace of the Kubeflow SDKs) lands at the top of site-packages.

Dependencies are installed from requirements.txt under the pins of
requirements.lock by scripts/install.sh (`make install`), not from here, so
that one lock governs the venv, CI and the pipeline's container image.
"""

from setuptools import find_packages, setup

NAMESPACE = 'tfx_captioning'
LAYERS = ('models', 'components', 'pipeline', 'cli', 'serving', 'kubeflow')
"""Top-level folders, lowest layer first; each imports only those before it."""

packages, package_dir = [], {}
for folder in LAYERS:
    for package in [folder] + [f'{folder}.{p}' for p in find_packages(where=folder)]:
        packages.append(f'{NAMESPACE}.{package}')
    package_dir[f'{NAMESPACE}.{folder}'] = folder

setup(
    name='tfx-image-captioning',
    version='0.1.0',
    description='A production TFX pipeline for image captioning on Flickr8k.',
    python_requires='>=3.10,<3.11',
    packages=packages,
    package_dir=package_dir,
    package_data={f'{NAMESPACE}.serving': ['deploy/*'], f'{NAMESPACE}.kubeflow': ['*.yaml']},
    entry_points={
        'console_scripts': [
            'caption-pipeline=tfx_captioning.cli.pipeline_cli:main',
            'caption-data=tfx_captioning.cli.data_cli:main',
            'caption-client=tfx_captioning.serving.client_cli:main',
            'caption-server=tfx_captioning.serving.server_cli:main',
            'caption-tflite=tfx_captioning.serving.tflite_cli:main',
            'caption-kfp=tfx_captioning.kubeflow.cli:main',
        ],
    },
)
