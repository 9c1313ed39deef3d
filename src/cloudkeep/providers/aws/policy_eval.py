"""Evaluate the IAM policy documents cloudkeep emits (the agents' S3 session policy).

moto enforces identity policies but not session policies, and IAM's policy simulator is neither
in moto nor usually granted, so the session policy is checked by evaluating it here. No
maintained PyPI library evaluates IAM requests against a policy (the ones found lint or
generate policies), so this is a careful evaluator of **the subset cloudkeep emits**, and it
refuses anything outside it rather than guess:

- ``Version`` 2012-10-17; statements with ``Effect`` (Allow/Deny), ``Action``, ``Resource`` and
  optionally ``Condition`` and ``Sid`` — no ``NotAction``/``NotResource``/``Principal``;
- wildcards ``*`` and ``?`` in actions (case-insensitive) and resources (case-sensitive);
- condition operators ``StringEquals``, ``StringNotEquals``, ``StringLike``, ``StringNotLike``
  (a key absent from the request fails the positive operators and satisfies the negated ones,
  as in IAM), ``Bool`` (``"true"``/``"false"``), ``Null`` (``"true"``: the key is absent), and
  the ``…IfExists`` form of the string and Bool operators (an absent key satisfies it); several
  values of one key match if any does, several keys and operators must all hold.

Decision as in IAM: an explicit Deny wins, else any Allow allows, else the request is denied.
A session policy only bounds the issuing identity's own rights: "allowed" here means "not
removed by the session policy".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_STATEMENT_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}
_STRING_OPERATORS = {"StringEquals", "StringNotEquals", "StringLike", "StringNotLike", "Bool"}
_OPERATORS = {*_STRING_OPERATORS, *(op + "IfExists" for op in _STRING_OPERATORS), "Null"}
_BOOLEANS = ("true", "false")


class PolicyError(ValueError):
    """The document is outside the subset this evaluator understands."""


@dataclass(frozen=True)
class Request:
    action: str  # e.g. "s3:PutObject"
    resource: str  # an ARN
    context: Mapping[str, str] = field(default_factory=dict)  # condition keys, e.g. {"s3:prefix": …}


@lru_cache(maxsize=512)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _strings(value: Any, what: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise PolicyError(f"{what} must be a string or a non-empty list of strings, not {value!r}")
    return values


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, keys in condition.items():
        if operator not in _OPERATORS:
            raise PolicyError(f"condition operator {operator!r} is not supported")
        if not isinstance(keys, dict) or not keys:
            raise PolicyError(f"condition {operator} must map keys to values")
        base = operator.removesuffix("IfExists")
        negated = "Not" in base
        for key, raw in keys.items():
            values = _strings(raw, f"condition {operator}/{key}")
            if base in ("Bool", "Null") and not all(v.lower() in _BOOLEANS for v in values):
                raise PolicyError(f"condition {operator}/{key} takes true or false, not {values!r}")
            actual = context.get(key)
            if base == "Null":
                if len(values) != 1:
                    raise PolicyError(f"condition Null/{key} takes one value, not {values!r}")
                if (actual is None) != (values[0].lower() == "true"):
                    return False
                continue
            if actual is None:
                if operator.endswith("IfExists"):
                    continue
                matched = False
            elif base.endswith("Like"):
                matched = any(_pattern(v, False).match(actual) for v in values)
            elif base == "Bool":
                matched = actual.lower() in {v.lower() for v in values}
            else:
                matched = actual in values
            if matched == negated:
                return False
    return True


def _statements(policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    if policy.get("Version") != "2012-10-17":
        raise PolicyError(f"policy Version must be 2012-10-17, not {policy.get('Version')!r}")
    if set(policy) - {"Version", "Statement", "Id"}:
        raise PolicyError(f"unsupported policy keys: {sorted(set(policy) - {'Version', 'Statement', 'Id'})}")
    raw = policy.get("Statement")
    statements = [raw] if isinstance(raw, dict) else raw
    if not isinstance(statements, list) or not statements:
        raise PolicyError("a policy needs at least one statement")
    for statement in statements:
        if not isinstance(statement, dict):
            raise PolicyError(f"a statement must be an object, not {statement!r}")
        unknown = set(statement) - _STATEMENT_KEYS
        if unknown:
            raise PolicyError(f"unsupported statement keys: {sorted(unknown)}")
        if statement.get("Effect") not in ("Allow", "Deny"):
            raise PolicyError(f"statement Effect must be Allow or Deny, not {statement.get('Effect')!r}")
        _strings(statement.get("Action"), "Action")
        _strings(statement.get("Resource"), "Resource")
        if not isinstance(statement.get("Condition", {}), dict):
            raise PolicyError("Condition must be an object")
    return statements


def _applies(statement: Mapping[str, Any], request: Request) -> bool:
    actions = _strings(statement["Action"], "Action")
    resources = _strings(statement["Resource"], "Resource")
    return (
        any(_pattern(a, True).match(request.action) for a in actions)
        and any(_pattern(r, False).match(request.resource) for r in resources)
        and _condition_holds(statement.get("Condition", {}), request.context)
    )


def decide(policy: Mapping[str, Any], request: Request) -> str:
    """``"allow"``, ``"explicit-deny"`` or ``"implicit-deny"`` for one request."""
    allowed = False
    for statement in _statements(policy):
        if _applies(statement, request):
            if statement["Effect"] == "Deny":
                return "explicit-deny"
            allowed = True
    return "allow" if allowed else "implicit-deny"


def allows(policy: Mapping[str, Any], request: Request | Sequence[Any]) -> bool:
    """Whether ``request`` (a ``Request`` or ``(action, resource[, context])``) is allowed."""
    if not isinstance(request, Request):
        request = Request(*request)
    return decide(policy, request) == "allow"
