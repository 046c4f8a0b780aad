"""Installs the captioning pipeline's packages and console scripts.

Dependencies are installed from requirements.txt under the pins of
requirements.lock by scripts/install.sh (`make install`), not from here, so
that one lock governs the venv, CI and the pipeline's container image.
"""

from setuptools import find_packages, setup

setup(
    name='tfx-image-captioning',
    version='0.1.0',
    description='A production TFX pipeline for image captioning on Flickr8k.',
    python_requires='>=3.10,<3.11',
    packages=find_packages(
        include=['pipeline*', 'components*', 'models*', 'serving*', 'kubeflow*']
    ),
    entry_points={
        'console_scripts': [
            'caption-pipeline=pipeline.cli:main',
            'caption-data=pipeline.data_cli:main',
            'caption-client=serving.client_cli:main',
            'caption-server=serving.server_cli:main',
            'caption-tflite=serving.tflite_captioner:main',
            'caption-kfp=kubeflow.cli:main',
        ],
    },
)
