"""The stages of the pipeline: prepare, precompute (stage one), train (stage two), evaluate."""
