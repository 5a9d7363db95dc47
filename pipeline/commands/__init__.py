"""One module per command family; each registers its commands on `mlpl.app.app`."""
