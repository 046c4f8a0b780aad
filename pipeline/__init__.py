"""Pipeline definition, shared settings, runners and data helpers."""
