"""Importable test helpers (fixtures and hooks stay in the conftest.py files)."""
