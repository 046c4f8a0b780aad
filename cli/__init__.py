"""The command-line applications (`caption-pipeline`, `caption-data`) and what they print or write.

The top layer: it may import `pipeline`, `components` and `models`, and nothing below imports it.
"""
