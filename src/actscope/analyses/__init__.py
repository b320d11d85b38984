"""Analyses built on the capture engine: profile, quantisation, sparsity, patching, lenses, probes."""
