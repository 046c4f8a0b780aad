"""`python -m kubeflow`: compiles the pipeline for Kubeflow Pipelines (see `kubeflow.cli`)."""

import sys

from kubeflow.cli import main

if __name__ == '__main__':
    sys.exit(main())
