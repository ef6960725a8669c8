"""Spectral scan: weight sources, spectra, scores, selection and the Spectrum file formats."""
