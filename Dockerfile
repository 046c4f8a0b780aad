# The pipeline image: every Kubeflow / Vertex AI step runs in it, and Dataflow
# or portable (Flink/Spark) Beam workers can too (--sdk_container_image /
# --environment_config). It is TFX's own image plus this project, with every
# Python package at the version of requirements.lock, exactly as
# scripts/install.sh installs the local .venv (tests/test_kubeflow.py checks
# that the two install the same way).
#
#   docker build -t REGISTRY/flickr8k-captioning:TAG .
#
# Build from the repository root; .dockerignore keeps the context to what is
# copied below.

# Beam's worker boot program must match the installed apache-beam (the lock's
# pin), which may differ from the one the TFX image was built with.
ARG BEAM_VERSION=2.60.0
ARG TFX_IMAGE=gcr.io/tfx-oss-public/tfx:1.16.0

FROM apache/beam_python3.10_sdk:${BEAM_VERSION} AS beam_sdk

FROM ${TFX_IMAGE}

# TFX 1.16 trains with Keras 2 (tf_keras), as the Makefile sets for local runs.
ENV TF_USE_LEGACY_KERAS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /pipeline

# Dependencies first: this slow layer is rebuilt only when the pins change,
# not on every code edit. The lock is a constraints file, as in install.sh.
COPY requirements.txt requirements.lock ./
RUN python -m pip install --upgrade "pip==24.2" \
 && python -m pip install -c requirements.lock -r requirements.txt

# The packages setup.py installs (tests/test_kubeflow.py checks the list).
COPY setup.py pyproject.toml ./
COPY pipeline/ pipeline/
COPY components/ components/
COPY models/ models/
COPY serving/ serving/
COPY kubeflow/ kubeflow/
COPY cli/ cli/
# Editable, as in install.sh: one copy of the code, importable from any working
# directory (KFP pods, Beam workers) as the `tfx_captioning` namespace
# (tfx_captioning.models -> /pipeline/models, ...), data files included.
RUN python -m pip install --no-deps --no-build-isolation -e . \
 && (python -m pip check || echo "pip check: conflicts inherited from TFX's pins (README, Known limits)") \
 && cd / && python -c "import tfx_captioning.components.flickr8k_example_gen.executor, tfx_captioning.pipeline.pipeline, tfx_captioning.kubeflow.runner"

# Beam's worker entrypoint (as in TFX's image), so Dataflow and portable
# runners can start this image as their SDK harness. KFP ignores it: the
# compiled spec sets each step's command
# (python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor).
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
