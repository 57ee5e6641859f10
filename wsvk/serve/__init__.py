"""The HTTP server (layer 4, over the pipeline's streaming engine): `python -m wsvk serve`."""
