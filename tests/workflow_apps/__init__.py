"""Importable workflow applications that the crash tests run in worker processes."""
