"""The model-level API: ``quantize_(model, config)``, calibration, conversion and ``report``."""
