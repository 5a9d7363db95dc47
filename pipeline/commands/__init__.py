"""One module per command family; each registers its commands on `pipeline.app.app`."""
