"""Retrieval quality on held-out groups: hours of training each (`make benchmark-quality`)."""
