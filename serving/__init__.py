"""Serving: TF Serving client, local TF-Serving-compatible server, deployment files."""
