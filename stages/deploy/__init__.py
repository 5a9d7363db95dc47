"""Using a trained run on new images: loading it with its metadata, `mlpl predict`, per-class thresholds, export."""
