"""In-process checks: test a function defined in a notebook or a test module without writing it
to a file first.

    import harness
    report = harness.check(my_attention, dtypes=["float32"])
    report.verdict, report.failures
    harness.assert_passes(my_attention, suites=["causal", "padding"])   # inside your own pytest test

The same suites, plugin and results as ``attn-harness check``, run through ``pytest.main`` in
this interpreter. The trade-off: the CLI gives every implementation its own process, so a kernel
that segfaults or hangs inside C code costs only its own results; here it takes the caller down
with it, and a hang inside C cannot be interrupted. Use the CLI for untrusted or compiled kernels.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import itertools
import json
import os
import tempfile
import types
from pathlib import Path
from typing import Any, Optional, Sequence, Union

# Functions handed to check() live here for the length of the run, reachable through an ordinary
# `package.module:attr` spec, so the plugin loads them exactly as it loads any other spec.
_inprocess = types.SimpleNamespace()
_counter = itertools.count(1)


class Report:
    """The outcome of :func:`check`: a verdict, per-property results and the failures with their
    counterexample and repro command. ``data`` is the report.json structure
    (:mod:`harness.report.model`)."""

    def __init__(self, data: dict):
        self.data = data

    @property
    def implementations(self) -> list:
        return self.data["implementations"]

    @property
    def verdict(self) -> str:
        """``fail`` if any implementation failed, ``unsupported`` if none could be certified,
        else ``pass``."""
        verdicts = [i["verdict"] for i in self.implementations]
        if "fail" in verdicts:
            return "fail"
        if not verdicts or "unsupported" in verdicts:
            return "unsupported"
        return "pass"

    @property
    def results(self) -> list:
        return [r for i in self.implementations for r in i["results"]]

    @property
    def failures(self) -> list:
        """Failed or errored properties whose tier is enforced in this run."""
        from harness.tiers import enforced

        strict = bool(self.data["options"].get("strict"))
        return [r for r in self.results if r["status"] in ("fail", "error") and enforced(r["tier"], strict)]

    def summary(self) -> str:
        each = ", ".join(f"{i['name']} {i['verdict']}" for i in self.implementations)
        lines = [f"attention-harness: {self.verdict.upper()} ({each})"]
        for r in self.failures:
            first = (r.get("message") or "").strip().splitlines()
            lines.append(f"- [{r['status']}] {r['suite']}::{r['property']} [{r['dtype']}]: {first[0] if first else ''}")
            if r.get("counterexample_text"):
                lines.append(f"    counterexample: {r['counterexample_text']}")
            if r.get("repro"):
                lines.append(f"    reproduce: {r['repro']}")
        return "\n".join(lines)

    def to_json(self, path: Union[str, os.PathLike, None] = None) -> str:
        text = json.dumps(self.data, indent=1, default=str)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self) -> str:
        from harness.report import to_markdown

        return to_markdown(self.data)

    def to_html(self, path: Union[str, os.PathLike]) -> Path:
        from harness.report import html as html_report

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html_report.render(self.data, path.parent))
        return path

    def _repr_html_(self) -> str:
        from harness.report import html as html_report
        from harness.report import matrix_rows

        headers, rows = matrix_rows(self.data)
        return f"<p><b>attention-harness: {self.verdict.upper()}</b></p>" + html_report.table(headers, rows)

    def __repr__(self) -> str:
        return f"<harness.Report {self.verdict}: {len(self.results)} results, {len(self.failures)} failures>"


def _spec_for(fn_or_spec: Any) -> tuple[str, Optional[str]]:
    if isinstance(fn_or_spec, str):
        return fn_or_spec, None
    if not callable(fn_or_spec):
        raise TypeError(f"check() takes a callable or a spec string, not {type(fn_or_spec).__name__}")
    key = f"fn{next(_counter)}"
    setattr(_inprocess, key, fn_or_spec)
    return f"harness.api:_inprocess.{key}", key


def check(fn_or_spec: Any, *, dtypes: Optional[Sequence[str]] = None, device: Optional[str] = None,
          profile: str = "default", suites: Optional[Sequence[str]] = None, strict: bool = False,
          seed: Optional[int] = None, properties: Optional[Sequence[str]] = None,
          quiet: bool = True, api: str = "sdpa") -> Report:
    """Run the property suites in this process against ``fn_or_spec`` (a callable with SDPA's
    contract, an :class:`harness.Adapter`, or a spec string like ``"sdpa"`` or
    ``"pkg.mod:fn"``) and return a :class:`Report`. Arguments mean what the CLI's flags mean;
    ``dtypes=None`` runs every dtype the implementation declares. ``api="flash_attn"``: a kernel
    written to flash-attn's signatures (as ``--api flash_attn``)."""
    import pytest

    from harness import report as R
    from harness.contract import LoadError
    from harness.loading import load
    from harness.defaults import BACKWARD_FACTOR, DEFAULT_SEED, FORWARD_FACTOR, HOST_DTYPES
    from harness.runner import available_suites, default_suites, suites_dir, verdict

    device = device or "cpu"
    for s in suites or []:
        if s not in available_suites():
            raise ValueError(f"unknown suite {s!r} (known: {', '.join(available_suites())})")
    spec, key = _spec_for(fn_or_spec)
    from harness.contract import split_api, with_api

    spec = with_api(spec, api)
    try:
        impl = load(spec)
    except LoadError as e:
        raise ValueError(str(e)) from None
    if key is not None:
        impl.name = getattr(fn_or_spec, "__name__", None) or type(fn_or_spec).__name__
    files = [str(suites_dir() / f"test_{s}.py") for s in (suites or default_suites(split_api(spec)[1]))]
    with tempfile.TemporaryDirectory(prefix="attn-harness-") as tmp:
        results_path = os.path.join(tmp, "results.json")
        args = [*files, "-p", "no:cacheprovider", "-q", "--no-header", "-rN", "--tb=no",
                "--import-mode=importlib", "-c", os.devnull, "--rootdir", str(suites_dir()),
                "--attn-impl", spec, "--attn-device", device, "--attn-profile", profile,
                "--attn-results", results_path, "-W", "ignore::DeprecationWarning", "-W", "ignore::UserWarning"]
        if not _plugin_autoloaded():
            args += ["-p", "attention_harness_plugin"]
        if dtypes:
            args += ["--attn-dtype", ",".join(dtypes)]
        if strict:
            args.append("--attn-strict")
        if seed is not None:
            args += ["--attn-seed", str(seed)]
        if properties:
            args += ["-k", " or ".join(properties)]
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            rc = pytest.main(args)
        if rc not in (0, 1, pytest.ExitCode.NO_TESTS_COLLECTED) or not os.path.exists(results_path):
            raise RuntimeError(f"the suites did not run (pytest exit {int(rc)}):\n{sink.getvalue()[-2000:]}")
        with open(results_path) as f:
            results = json.load(f)
    if key is not None:
        delattr(_inprocess, key)
    replay = _replayable_spec(fn_or_spec) if key is not None else spec
    for r in results:
        r["impl"] = impl.name if key is not None else spec
        if key is not None and r.get("repro"):
            # The registry name means nothing to a later shell: point at where the function lives.
            r["repro"] = r["repro"].replace(spec, replay)
    options = {"device": device, "dtypes": list(dtypes) if dtypes else
               [d for d in HOST_DTYPES.get(device, HOST_DTYPES["cpu"]) if d in impl.capabilities.dtypes],
               "dtypes_from": "option" if dtypes else "declared", "profile": profile,
               "suites": list(suites) if suites else "default", "properties": list(properties) if properties else None,
               "strict": strict, "seed": seed if seed is not None else DEFAULT_SEED,
               "forward_factor": FORWARD_FACTOR, "backward_factor": BACKWARD_FACTOR}
    data = R.new_report(options, ["harness.check", impl.name], device)
    data["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data["implementations"] = [{
        "name": impl.name, "spec": spec if key is None else f"<in-process {impl.name}>",
        "verdict": verdict(results, strict), "description": impl.description,
        "capabilities": impl.capabilities.to_dict(), "duration_s": round(sum(r.get("duration_s") or 0 for r in results), 2),
        "results": results,
        "fingerprint": next((r["worst"].get("fingerprint") for r in results
                             if r["property"] == "test_fingerprint" and r.get("worst")), None)}]
    if os.environ.get("ATTN_HARNESS_VALIDATE_REPORTS"):
        from harness.report.model import validate

        validate(json.loads(json.dumps(data, default=str)))
    return Report(data)


def _replayable_spec(fn: Any) -> str:
    """``file.py:name`` for a function defined in a file (``__main__`` included), else a
    placeholder the user fills in."""
    import inspect

    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    try:
        path = inspect.getsourcefile(fn if inspect.isfunction(fn) or inspect.isclass(fn) else type(fn))
    except TypeError:
        path = None
    if path and os.path.exists(path) and "<" not in name:
        return f"{path}:{name}"
    return f"YOUR_FILE.py:{getattr(fn, '__name__', 'fn')}"


def _plugin_autoloaded() -> bool:
    # The entry point loads the plugin in every pytest run unless plugin autoloading is off.
    return not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")


def assert_passes(fn_or_spec: Any, **kwargs: Any) -> Report:
    """:func:`check`, raising ``AssertionError`` with a short summary (each failure's first
    message line, counterexample and repro) unless the verdict is ``pass``."""
    report = check(fn_or_spec, **kwargs)
    if report.verdict != "pass":
        raise AssertionError(report.summary())
    return report

