"""Where search/ and server/ import the constraint contract from today: `Constraint`, `State` and
`apply_masks` are declared in grammars/base.py; this module only names them (prefer
`from searchdec.grammars import ...`)."""

from searchdec.grammars.base import Constraint, State, apply_masks

__all__ = ["Constraint", "State", "apply_masks"]
