"""Rewards for structure: a JSON document valid under a schema, text a grammar accepts.

`JsonValid(schema)` scores 1.0 when the output parses as JSON and validates (jsonschema, the
schema's own draft), else 0.0; with `partial=True`, an invalid document scores by the fraction of the
schema's validation errors it avoids, which gives a search a gradient. `Accepts(spec, model)` scores
1.0 when the model's tokenizer reads the output as a complete sentence of the constraint (the same
engine that constrains generation), else 0.0.
Both pickle (an executor ships rewards to its workers): the schema's validator and the compiled
constraint are rebuilt from the schema and the spec on the other side.
"""

from __future__ import annotations

import json

import jsonschema

from searchdec.errors import SchemaError
from searchdec.rewards.base import Reward


class JsonValid(Reward):
    def __init__(self, schema, *, partial: bool = False) -> None:
        super().__init__()
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        self.schema = schema
        self.validator = _validator(schema)
        self.partial = partial

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        del state["validator"]  # holds local functions; rebuilt from the schema
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.validator = _validator(self.schema)

    def _score(self, prompts, outputs):
        return [self._one(output) for output in outputs]

    def _one(self, output: str) -> float:
        try:
            document = json.loads(output)
        except ValueError:
            return 0.0
        errors = sum(1 for _ in self.validator.iter_errors(document))
        if not errors:
            return 1.0
        return 1.0 / (1.0 + errors) if self.partial else 0.0


class Accepts(Reward):
    """1.0 when `spec` (sd.regex, sd.json_schema, sd.lark, sd.sql...) accepts the output whole."""

    def __init__(self, spec, model) -> None:
        super().__init__()
        self.spec = spec if hasattr(spec, "compile") else None  # None: given an already compiled constraint
        self.constraint = spec.compile(model) if self.spec is not None else spec
        self.model = model

    def __getstate__(self) -> dict:
        if self.spec is None:
            raise TypeError(
                "Accepts made from a compiled constraint cannot be pickled (its tokenizer is native code): "
                "pass the spec (sd.regex(...), sd.json_schema(...)), which compiles again where it is unpickled"
            )
        state = super().__getstate__()
        del state["constraint"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.constraint = self.spec.compile(self.model)

    def _score(self, prompts, outputs):
        scores = []
        for output in outputs:
            try:
                state = self.constraint.start().advance_many(self.model.encode(output, add_special_tokens=False))
            except ValueError:
                scores.append(0.0)
                continue
            scores.append(1.0 if state.accepting else 0.0)
        return scores


def _validator(schema) -> jsonschema.protocols.Validator:
    """A validator of the schema's own draft; a SchemaError naming the keyword's place if it is invalid."""
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise SchemaError(error.message, "/" + "/".join(str(p) for p in error.path)) from None
    return validator_class(schema)
