"""Checks, one module per checklist section. See `_registry` for the contract."""

from ._registry import CheckContext, Finding, check, registered

__all__ = ["CheckContext", "Finding", "check", "registered"]
