"""Glue between Triton's Python backend and the smoothguard package (model.py adapters)."""
