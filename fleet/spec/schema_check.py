"""A fast yes/no for the JSON Schema: the schema compiled, once, into nested Python checks.

Valid manifests are the common case, and for them jsonschema's error machinery is pure cost (it was a third of
a `diff` on 1,000 profiles). So the loader asks this first and only runs jsonschema, for its messages, on a
document this rejects. It reads the same schema file: the schema stays the one source of the rules. It knows
the keywords that schema uses, with Draft 2020-12's meaning (bool is not a number, 1.0 is an integer, enum
and const compare True and 1 as different), and refuses to compile a schema with any other keyword, so a rule
added to the schema can never be skipped silently (tests/test_schema_check.py proves both agree)."""

from __future__ import annotations

import re
from collections.abc import Callable

Check = Callable[[object], bool]

# Keywords that say nothing about validity ("format" too: jsonschema asserts it only with a format checker,
# which the loader does not pass; "then" and "else" are read with their "if").
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples", "$defs",
                          "deprecated", "readOnly", "writeOnly", "format", "then", "else"})
_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


class UnsupportedSchema(ValueError):
    """The schema uses a keyword this compiler does not know: callers fall back to jsonschema alone."""


def json_equal(a: object, b: object) -> bool:
    """Equality as JSON Schema defines it for enum and const: True is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if _number(a) and _number(b):
        return a == b
    return type(a) is type(b) and a == b


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Compiler:
    def __init__(self, root: dict):
        self.root = root
        self.refs: dict[str, Check] = {}

    def compile(self, schema: object) -> Check:
        if schema is True:
            return lambda v: True
        if schema is False:
            return lambda v: False
        if not isinstance(schema, dict):
            raise UnsupportedSchema(f"a schema must be an object or a boolean, not {schema!r}")
        checks = [self._keyword(key, value, schema) for key, value in schema.items() if key not in _ANNOTATIONS]
        if not checks:
            return lambda v: True
        if len(checks) == 1:
            return checks[0]
        return lambda v: all(c(v) for c in checks)

    def _ref(self, ref: str) -> Check:
        if ref not in self.refs:
            if not ref.startswith("#/"):
                raise UnsupportedSchema(f"$ref {ref!r}: only local references are compiled")
            slot: list[Check] = []
            self.refs[ref] = lambda v: slot[0](v)  # a recursive reference resolves through the slot
            target: object = self.root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target[part]  # type: ignore[index]
            slot.append(self.compile(target))
        return self.refs[ref]

    def _keyword(self, key: str, value, schema: dict) -> Check:
        if key == "type":
            names = value if isinstance(value, list) else [value]
            kinds = [_TYPES[n] for n in names]
            return kinds[0] if len(kinds) == 1 else (lambda v: any(k(v) for k in kinds))
        if key == "$ref":
            return self._ref(value)
        if key == "properties":
            props = {name: self.compile(sub) for name, sub in value.items()}
            return lambda v: not isinstance(v, dict) or all(props[k](x) for k, x in v.items() if k in props)
        if key == "additionalProperties":
            known = set(schema.get("properties", {}))
            if "patternProperties" in schema:
                raise UnsupportedSchema("patternProperties")
            extra = self.compile(value)
            if value is False:
                return lambda v: not isinstance(v, dict) or all(k in known for k in v)
            return lambda v: not isinstance(v, dict) or all(extra(x) for k, x in v.items() if k not in known)
        if key == "required":
            required = tuple(value)
            return lambda v: not isinstance(v, dict) or all(n in v for n in required)
        if key == "propertyNames":
            name_check = self.compile(value)
            return lambda v: not isinstance(v, dict) or all(name_check(k) for k in v)
        if key == "items":
            item = self.compile(value)
            return lambda v: not isinstance(v, list) or all(item(x) for x in v)
        if key == "minItems":
            return lambda v: not isinstance(v, list) or len(v) >= value
        if key == "maxItems":
            return lambda v: not isinstance(v, list) or len(v) <= value
        if key == "minLength":
            return lambda v: not isinstance(v, str) or len(v) >= value
        if key == "maxLength":
            return lambda v: not isinstance(v, str) or len(v) <= value
        if key == "pattern":
            search = re.compile(value).search
            return lambda v: not isinstance(v, str) or search(v) is not None
        if key == "minimum":
            return lambda v: not _number(v) or v >= value
        if key == "maximum":
            return lambda v: not _number(v) or v <= value
        if key == "enum":
            options = list(value)
            return lambda v: any(json_equal(v, o) for o in options)
        if key == "const":
            return lambda v: json_equal(v, value)
        if key == "not":
            inner = self.compile(value)
            return lambda v: not inner(v)
        if key == "oneOf":
            branches = [self.compile(sub) for sub in value]
            return lambda v: sum(1 for b in branches if b(v)) == 1
        if key == "anyOf":
            branches = [self.compile(sub) for sub in value]
            return lambda v: any(b(v) for b in branches)
        if key == "allOf":
            branches = [self.compile(sub) for sub in value]
            return lambda v: all(b(v) for b in branches)
        if key == "if":
            condition = self.compile(value)
            then, otherwise = self.compile(schema.get("then", True)), self.compile(schema.get("else", True))
            return lambda v: then(v) if condition(v) else otherwise(v)
        raise UnsupportedSchema(f"keyword {key!r} is not compiled")


def compile_schema(schema: dict) -> Check:
    """A function that says whether a document is valid; UnsupportedSchema for a keyword it does not know."""
    return _Compiler(schema).compile(schema)
