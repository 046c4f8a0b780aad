"""Kubeflow Pipelines runner for the captioning pipeline."""
