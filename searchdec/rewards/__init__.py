"""Rewards: scoring whole outputs and steps (execution, PRMs, callables)."""
