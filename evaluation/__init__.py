"""Evaluation: probes (linear / MLP, layer sweep), baseline features, and the tables that compare them."""
