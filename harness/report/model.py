"""The report's structure, defined once: typed classes for ``report.json``, the JSON Schema
generated from them (shipped as ``harness/report/report.schema.json``), and the ``Report`` object that
:func:`harness.check` returns.

``compare`` and ``merge`` read reports written by other versions, so the shape is versioned
(``schema_version``) and every report the tests write is validated against the shipped schema.
A field added here must be added to the schema file too: ``python -m harness.report.model``
rewrites it, and a test fails while the two differ.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from harness.defaults import BACKWARD_FACTOR, FORWARD_FACTOR

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")

# not_run: selected but never reached (the run stopped early; the message says why).
Status = Literal["pass", "fail", "error", "skip", "unsupported", "not_run"]
Verdict = Literal["pass", "fail", "unsupported"]
Tier = Literal["gate", "strict", "info"]


@dataclass
class Result:
    """One property in one dtype for one implementation."""
    suite: str
    property: str
    tier: Tier
    dtype: str
    device: str
    status: Status
    cases: int  # generated cases that ran
    message: str
    repro: str  # the command that replays a failure ("" when it passed)
    seed: Optional[int]
    duration_s: Optional[float]
    impl: Optional[str] = None
    unsupported_cases: int = 0  # cases the kernel raised NotImplementedError on
    worst: dict = field(default_factory=dict)  # worst comparison: ratio, factor, where, error, baseline_error, case...
    counterexample: Optional[dict] = None  # the shrunk Case's fields
    counterexample_text: Optional[str] = None
    counterexample_extra: Optional[dict] = None  # the other drawn arguments (--example)
    doc: str = ""  # the property's description
    # Failures only: the failing comparison's distance in units in the last place of the output
    # dtype ("inf" for NaN/Inf), and the rule applied (kind, factor, baseline, baseline_error).
    ulps: Union[float, str, None] = None
    rule: Optional[dict] = None


@dataclass
class Certificate:
    """One invariance certificate (bitwise, the kernel against itself) in one dtype."""
    suite: str  # "invariance"
    kind: str  # batch | split | rerun
    property: str
    dtype: str
    device: str
    status: Status  # fail: declared and broken; unsupported: not declared (or not measurable here)
    enforced: bool  # in the gate (--certify invariance)
    declared: Optional[bool]  # the capability below says the kernel promises it
    declared_as: Optional[str]  # batch_invariant | split_invariant | deterministic
    held: Optional[bool]  # measured: bitwise equal everywhere compared (None: not measured)
    compared: str  # exactly what was compared with what
    shapes: dict
    comparisons: int
    first_difference: Optional[dict]  # index, both values, ulps, max_ulps, elements_differing
    where: dict  # the call that broke it: batch size and position, chunk, rerun number
    message: str
    repro: str
    seed: Optional[int]
    duration_s: Optional[float]
    reruns: Optional[int] = None
    ulps: Union[float, str, None] = None
    impl: Optional[str] = None


@dataclass
class Cause:
    """One root cause: failures of one implementation that one explanation accounts for (harness.triage)."""
    kind: str  # harness.triage's class of the cause ("mask_ignored", "causal", ...; "property" when none fits)
    title: str  # what it is, in one line
    properties: int  # how many properties it explains
    dtypes: list[str]
    results: list[str]  # every failure it explains, "suite::property [dtype]"
    example: str  # the most telling of them
    message: str  # that failure's first message line
    repro: str  # the command (or in-process call) that replays it
    counterexample: Optional[str] = None


@dataclass
class ImplementationReport:
    name: str
    spec: str
    verdict: Verdict
    description: str
    capabilities: dict
    duration_s: Optional[float]
    results: list[Result]
    fingerprint: Optional[dict] = None
    log: Optional[str] = None
    problem: Optional[str] = None  # why its test process ended abnormally, if it did
    op_trace: Optional[dict] = None  # aten ops the kernel called (integrity suite)
    environment: Optional[dict] = None  # merged reports: the machine this column ran on
    source: Optional[str] = None  # merged reports: the report file it came from
    causes: Optional[list[Cause]] = None  # the failures grouped by root cause, most telling first
    certificates: list[Certificate] = field(default_factory=list)  # the invariance tier (--certify)
    diagnosis: Optional[str] = None  # why it was stopped after the base case (it cannot run it at all)


@dataclass
class Options:
    """The run's options (reports written by hand or by older versions may omit some)."""
    device: str
    dtypes: list[str]
    profile: str = "default"
    suites: Any = "default"  # list of names, or "default"
    strict: bool = False
    seed: Optional[int] = None
    forward_factor: float = FORWARD_FACTOR
    backward_factor: float = BACKWARD_FACTOR
    properties: Optional[list[str]] = None
    dtypes_from: str = "option"  # "option" or "declared" (each implementation's declared dtypes)
    forbid_ops: list[str] = field(default_factory=list)
    triton_interpret: bool = False
    certify: list[str] = field(default_factory=list)  # certificate tiers in the gate (--certify)
    reruns: Optional[int] = None  # the run-to-run certificate's repeated calls (--reruns)


@dataclass
class ReportData:
    schema_version: int
    created: str
    harness_version: str
    command: list[str]
    options: Options
    environment: dict
    implementations: list[ImplementationReport]
    merged_from: Optional[list[dict]] = None  # `attn-harness merge`: the reports combined
    throughput: Optional[list[dict]] = None  # `attn-harness bench` / merged bench entries


# --- JSON Schema from the classes ------------------------------------------------------------

def _type_schema(tp) -> dict:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return {}
    if origin is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        inner = _type_schema(non_none[0]) if len(non_none) == 1 else {"anyOf": [_type_schema(a) for a in non_none]}
        return {"anyOf": [inner, {"type": "null"}]} if type(None) in args else inner
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        return {"$ref": f"#/$defs/{tp.__name__}"}
    return {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
            bool: {"type": "boolean"}}[tp]


def _class_schema(cls) -> dict:
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        props[f.name] = _type_schema(hints[f.name])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "description": (cls.__doc__ or cls.__name__).strip().splitlines()[0],
            "properties": props, "required": required, "additionalProperties": False}


def json_schema() -> dict:
    defs = {c.__name__: _class_schema(c) for c in (Result, Cause, Certificate, ImplementationReport, Options)}
    top = _class_schema(ReportData)
    top["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "attention-harness report.json",
            **top, "$defs": defs}


def shipped_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(report: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when ``report`` does not match the shipped schema
    (needs the ``jsonschema`` package, a test dependency)."""
    import jsonschema

    jsonschema.validate(report, shipped_schema())


def schema_fields_markdown() -> str:
    """The README's field list, generated from the classes (a test keeps the README in step)."""
    lines = []
    for cls, where in ((ReportData, "top level"), (Options, "`options`"),
                       (ImplementationReport, "`implementations[]`"), (Result, "`implementations[].results[]`"),
                       (Cause, "`implementations[].causes[]`"),
                       (Certificate, "`implementations[].certificates[]`")):
        names = [f.name + ("" if (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                           else "?") for f in dataclasses.fields(cls)]
        lines.append(f"- {where}: " + ", ".join(f"`{n}`" for n in names))
    return "\n".join(lines)


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=1) + "\n")
    print(f"wrote {SCHEMA_PATH}")
