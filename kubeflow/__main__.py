"""`python -m tfx_captioning.kubeflow`: compiles the pipeline for Kubeflow Pipelines (see `kubeflow.cli`)."""

import sys

from tfx_captioning.kubeflow.cli import main

if __name__ == '__main__':
    sys.exit(main())
