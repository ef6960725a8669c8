"""Built-in exporters: the deliverables of a run (implementations in :mod:`spectra_core.export`)."""

from __future__ import annotations

from spectra_core.export.adapter import PeftAdapterExporter
from spectra_core.export.axolotl import AxolotlExporter
from spectra_core.export.merged import MergedExporter
from spectra_core.export.report import ReportExporter
from spectra_core.export.spectrum_yaml import SpectrumYamlExporter

EXPORTERS: list[type] = [PeftAdapterExporter, MergedExporter, ReportExporter, SpectrumYamlExporter, AxolotlExporter]
