"""Inputs: frame sources, image files, the shipped model files and the model runners (always imported
as `edgeface.io`, so it never shadows the standard library's `io`)."""
