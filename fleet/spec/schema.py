"""The JSON Schema: the one source of validation rules and of defaults."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from fleet.spec.errors import Problem
from fleet.spec.yamlsource import Located, dotted

_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "schemas",  # source checkout / editable install
    Path(__file__).resolve().parents[1] / "_schemas",  # wheel install
)


NO_NUL_PATTERN = "^[^\\u0000]*$"


def schema_path(name: str = "fleet.schema.json") -> Path:
    for folder in _CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"schema {name} not found in {', '.join(map(str, _CANDIDATES))}")


@functools.cache
def load_schema(name: str = "fleet.schema.json") -> dict:
    return json.loads(schema_path(name).read_text(encoding="utf-8"))


def defaults(block: str) -> dict:
    """Defaults of one $defs block (restart, drain, ...), read from the schema's `default` keywords."""
    return dict(_defaults(block))  # a copy: the loader merges into what it gets


@functools.cache
def _defaults(block: str) -> dict:
    props = load_schema()["$defs"][block].get("properties", {})
    return {key: sub["default"] for key, sub in props.items() if "default" in sub}


def top_default(key: str):
    return load_schema()["properties"][key].get("default")


def def_default(name: str):
    return load_schema()["$defs"][name].get("default")


def _expected(error) -> str:
    schema = error.schema
    validator = error.validator
    if validator == "enum":
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if validator == "const":
        return repr(schema["const"])
    if validator == "type":
        t = schema["type"]
        return " or ".join(t) if isinstance(t, list) else {"object": "a mapping", "array": "a list",
                                                           "integer": "an integer"}.get(t, f"a {t}")
    if validator == "oneOf" and any("pattern" in s for s in schema.get("oneOf", [])):
        return "a duration such as 2.5s, 90s, 20m, 1h or a number of seconds"
    if validator == "pattern" and schema["pattern"] == load_schema()["$defs"]["metrics"]["properties"]["listen"]["pattern"]:
        return "an address such as 127.0.0.1:9464, [::1]:9464 or :9464"
    if validator == "pattern" and schema["pattern"] == NO_NUL_PATTERN:
        return "text without NUL bytes (no command argument, environment value or path can hold one)"
    if validator == "pattern":
        return f"a string matching {schema['pattern']}"
    if validator == "minimum":
        return f"a number >= {schema['minimum']}"
    if validator == "maximum":
        return f"a number <= {schema['maximum']}"
    if validator == "minItems":
        return f"at least {schema['minItems']} item(s)"
    if validator == "maxItems":
        return f"at most {schema['maxItems']} item(s)"
    if validator == "minLength":
        return "a non-empty string" if schema["minLength"] == 1 else f"at least {schema['minLength']} characters"
    if validator == "maxLength":
        return f"at most {schema['maxLength']} characters"
    return error.message


def _found(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@functools.cache
def fast_check(schema_name: str = "fleet.schema.json"):
    """The compiled yes/no for the schema (fleet.spec.schema_check), or None if it cannot be compiled."""
    from fleet.spec.schema_check import UnsupportedSchema, compile_schema

    try:
        return compile_schema(load_schema(schema_name))
    except UnsupportedSchema:
        return None


def validate_document(located: Located, filename: str, schema_name: str = "fleet.schema.json") -> list[Problem]:
    check = fast_check(schema_name)
    if check is not None and check(located.data):
        return []  # valid: jsonschema is only needed to word what is wrong
    from jsonschema import Draft202012Validator  # imported here: the controller never validates

    validator = Draft202012Validator(load_schema(schema_name))
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(located.data), key=lambda e: (list(map(str, e.absolute_path)))):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            import difflib  # only for a manifest with an unknown key

            for key in sorted(set(error.instance) - set(allowed)):
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else ("allowed: " + ", ".join(allowed) if allowed else "")
                line, col = located.mark(path + (key,), key=True)
                problems.append(Problem(filename, line, col, dotted(path + (key,)), f"unknown key '{key}'", hint))
            continue
        if "propertyNames" in error.relative_schema_path and path and path[-1] == "env":
            line, col = located.mark(path + (error.instance,), key=True)
            problems.append(Problem(filename, line, col, dotted(path + (error.instance,)),
                                    f"invalid environment variable name '{error.instance}': expected letters, digits "
                                    f"and '_', not starting with a digit"))
            continue
        if "propertyNames" in error.relative_schema_path or error.validator == "propertyNames":
            name = error.instance
            line, col = located.mark(path + (name,), key=True)
            reserved = name in ("hermes", "test", "tmp", "root", "sudo")
            message = (f"profile name '{name}' is reserved by Hermes" if reserved else
                       f"invalid name '{name}': expected lower-case letters, digits, '_' or '-', starting with a letter or digit, at most 64 characters")
            problems.append(Problem(filename, line, col, dotted(path + (name,)), message))
            continue
        if error.validator == "not" and error.validator_value == {}:
            # {"not": {}} marks a key that exists elsewhere (fleet-wide) but means nothing here.
            line, col = located.mark(path, key=True)
            where = "in a profile" if path[:1] == ("profiles",) else "here"
            problems.append(Problem(filename, line, col, dotted(path), f"'{path[-1]}' cannot be set {where}",
                                    error.schema.get("description", "")))
            continue
        if error.validator == "required":
            line, col = located.mark(path)
            problems.append(Problem(filename, line, col, dotted(path), error.message.replace("is a required property", "is required")))
            continue
        line, col = located.mark(path)
        found = _found(error.instance)
        if "env" in path and isinstance(error.instance, str):
            found = "a string (value not shown: env values may be secrets)"
        problems.append(Problem(filename, line, col, dotted(path), f"expected {_expected(error)}; found {found}"))
    return problems
