"""The built-in exporters, one module each: ``peft-adapter`` (adapter.py), ``merged`` (merged.py),
``report`` (report.py, figures in plots.py). Shared helpers live in common.py."""
