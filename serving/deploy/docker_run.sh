#!/usr/bin/env bash
# Serves the pushed captioning model with the real TF Serving (production
# server; the repo's caption-server is only a development stand-in).
#
#   serving/deploy/docker_run.sh [SERVING_ROOT]
#
# SERVING_ROOT is the Pusher's serving root (default build/serving, i.e.
# LocalPaths.serving_root); it holds captioner/<version>/saved_model.pb and is
# mounted read-only at /models, where models.config points. This directory is
# mounted at /etc/tfserving for models.config and batching_parameters.txt.
# The flags are the same as the Kubernetes Deployment's (a test checks it).
# Ports are published on loopback only; change -p to expose them.
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVING_ROOT="$(realpath "${1:-build/serving}")"
IMAGE="tensorflow/serving:2.16.1"

exec docker run --rm --name captioner-serving \
  -p 127.0.0.1:8500:8500 \
  -p 127.0.0.1:8501:8501 \
  --mount "type=bind,source=${SERVING_ROOT},target=/models,readonly" \
  --mount "type=bind,source=${DEPLOY_DIR},target=/etc/tfserving,readonly" \
  --entrypoint tensorflow_model_server \
  "${IMAGE}" \
  --port=8500 \
  --rest_api_port=8501 \
  --model_config_file=/etc/tfserving/models.config \
  --model_config_file_poll_wait_seconds=60 \
  --file_system_poll_wait_seconds=30 \
  --enable_batching=true \
  --batching_parameters_file=/etc/tfserving/batching_parameters.txt \
  --enable_model_warmup=true
