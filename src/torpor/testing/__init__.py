"""Helpers for testing code built on torpor, and for torpor's own tests and benchmarks."""

from ._postgres import TemporaryPostgres, find_postgres_bin

__all__ = ["TemporaryPostgres", "find_postgres_bin"]
