"""Custom TFX components of the captioning pipeline."""
