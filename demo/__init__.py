"""The demo: a synthetic labelled corpus and the whole pipeline run on it (`musetok demo`)."""
