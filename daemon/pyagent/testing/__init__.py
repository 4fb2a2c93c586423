"""Helpers for PyAgent's tests and for plugin authors' tests."""
