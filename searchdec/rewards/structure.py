"""Rewards for structure: a JSON document valid under a schema, text a grammar accepts.

`JsonValid(schema)` scores 1.0 when the output parses as JSON and validates (jsonschema, the
schema's own draft), else 0.0; with `partial=True`, an invalid document scores by the fraction of the
schema's validation errors it avoids, which gives a search a gradient. `Accepts(spec, model)` scores
1.0 when the model's tokenizer reads the output as a complete sentence of the constraint (the same
engine that constrains generation), else 0.0.
"""

from __future__ import annotations

import json

import jsonschema

from searchdec.rewards.base import Reward


class JsonValid(Reward):
    def __init__(self, schema, *, partial: bool = False) -> None:
        super().__init__()
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        try:
            validator_class = jsonschema.validators.validator_for(schema)
            validator_class.check_schema(schema)
        except jsonschema.SchemaError as error:
            from searchdec.errors import SchemaError

            raise SchemaError(error.message, "/" + "/".join(str(p) for p in error.path)) from None
        self.validator = validator_class(schema)
        self.partial = partial

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
        self.constraint = spec.compile(model) if hasattr(spec, "compile") else spec
        self.model = model

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
