"""Executors: where expansions and reward calls run (in-process by default, Ray actors)."""
