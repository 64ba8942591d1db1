"""`compile_spec`: a constraint spec compiled for one tokenizer — by the backend its `backend` field names
(grammars/base.py's registry), joined with the checks its outputs must also pass (`spec.split_checks()`,
grammars/checks.py) whatever the backend — and cached per tokenizer (`TokenizerInfo.compiled`)."""

from __future__ import annotations

from searchdec.grammars.base import Constraint, backend_named, tokenizer_info
from searchdec.grammars.checks import CheckedConstraint

COMPILED_PER_TOKENIZER = 256  # compiled constraints kept per tokenizer (least recently used go first)


def compile_spec(spec, source) -> Constraint:
    """`spec` compiled for the tokenizer of `source` (a model, a Hugging Face tokenizer or a
    TokenizerInfo: see `tokenizer_info`), with its checks joined; cached."""
    info = tokenizer_info(source)
    key = repr(spec)  # specs are frozen dataclasses: the repr holds every field
    cache = info.compiled
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    grammar, checks = spec.split_checks()
    constraint = backend_named(spec.backend).compile(grammar, info)
    if checks:
        constraint = CheckedConstraint(constraint, tuple(checks), info)
    cache[key] = constraint
    if len(cache) > COMPILED_PER_TOKENIZER:
        cache.popitem(last=False)
    return constraint
