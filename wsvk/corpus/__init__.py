"""Corpus synthesis (layer 4, over the pipeline): `python -m wsvk batch INPUT --out DIR`, locally or
on a Ray cluster; resumable."""
