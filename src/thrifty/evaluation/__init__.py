"""Offline evaluation: replay recorded model outcomes through the real pipeline."""
