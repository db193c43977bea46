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

    def __init__(self, data: dict, path: Optional[Path] = None):
        self.data = data
        self.path = path  # the report directory, when one was written

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
    def certificates(self) -> list:
        """The invariance tier's certificates (empty unless the run included it)."""
        return [c for i in self.implementations for c in i.get("certificates") or []]

    @property
    def failures(self) -> list:
        """Failed or errored properties whose tier is enforced in this run."""
        from harness.tiers import enforced

        strict = bool(self.data["options"].get("strict"))
        return ([r for r in self.results if r["status"] in ("fail", "error") and enforced(r["tier"], strict)]
                + [c for c in self.certificates if c["enforced"] and c["status"] in ("fail", "error")])

    def summary(self, limit: int = 4000) -> str:
        """The verdict, then the causes (one line each, most telling first, with the call that
        replays its most telling failure), then how to see every failure; at most ``limit``
        characters whatever fails."""
        from harness.report import cause_lines

        each = ", ".join(f"{i['name']} {i['verdict']}" for i in self.implementations)
        n = len(self.failures)
        head = f"attention-harness: {self.verdict.upper()} ({each})" + (f": {n} failing properties x dtypes" if n else "")
        tail = []
        if self.path:
            tail.append(f"report: {self.path}")
        if n:
            tail.append("every failure, with its counterexample and repro: report = harness.check(...); "
                        "report.failures, report.to_markdown(), report.to_html('report.html')")
        budget = limit - len(head) - sum(len(t) + 1 for t in tail) - 80
        body = []
        for impl in self.implementations:
            causes = impl.get("causes") or []
            if causes:
                body.append(f"{impl['name']}: {len(causes)} cause{'' if len(causes) == 1 else 's'}, most telling first:")
            for line, c in zip(cause_lines(impl, limit=360), causes):
                more = [line] + ([f"   reproduce: {c['repro'][:600]}"] if c.get("repro") else [])
                if sum(len(x) + 1 for x in body + more) > budget:
                    body.append("... and more causes: see report.failures")
                    break
                body += more
        text = "\n".join([head, *body, *tail])
        return text if len(text) <= limit else text[:limit - 4] + " ..."

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
          case: Optional[str] = None, example: Optional[dict] = None, quiet: bool = True,
          api: str = "sdpa", certify: Sequence[str] = (), reruns: Optional[int] = None) -> Report:
    """Run the property suites in this process against ``fn_or_spec`` (a callable with SDPA's
    contract, an :class:`harness.Adapter`, or a spec string like ``"sdpa"`` or
    ``"pkg.mod:fn"``) and return a :class:`Report`. Arguments mean what the CLI's flags mean;
    ``dtypes=None`` runs every dtype the implementation declares. ``api="flash_attn"``: a kernel
    written to flash-attn's signatures (as ``--api flash_attn``). ``case`` (a ``Case(...)`` repr)
    and ``example`` (its other drawn arguments) replay one counterexample exactly, as a failure's
    ``repro`` shows. ``certify=("invariance",)`` adds the invariance certificates to the run and
    to the verdict (``report.certificates``)."""
    import pytest

    from harness import report as R
    from harness.contract import LoadError
    from harness.loading import load
    from harness.defaults import BACKWARD_FACTOR, DEFAULT_SEED, FORWARD_FACTOR, HOST_DTYPES
    from harness.runner import available_suites, default_suites, suites_dir, verdict
    from harness.triage import triage

    from harness import certify as C

    device = device or "cpu"
    certify = list(certify or ())
    if C.unknown(certify):
        raise ValueError(f"unknown certify tier {C.unknown(certify)[0]!r} (known: {', '.join(C.TIERS_CERTIFIED)})")
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
    plain = default_suites(split_api(spec)[1])
    files = [str(suites_dir() / f"test_{s}.py") for s in (C.suites_with(suites, certify, plain) or plain)]
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
        if case:
            args += ["--attn-case", case]
            if example:
                args += ["--attn-example", json.dumps(example)]
        if reruns:
            args += ["--attn-reruns", str(reruns)]
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            rc = pytest.main(args)
        if rc not in (0, 1, pytest.ExitCode.NO_TESTS_COLLECTED) or not os.path.exists(results_path):
            raise RuntimeError(f"the suites did not run (pytest exit {int(rc)}):\n{sink.getvalue()[-2000:]}")
        with open(results_path) as f:
            results = json.load(f)
    if key is not None:
        delattr(_inprocess, key)
    for r in results:
        r["impl"] = impl.name if key is not None else spec
        if r.get("repro"):
            # In-process, the repro is the in-process call: the function may live in a notebook
            # or a test module no shell command can name.
            r["repro"] = _inprocess_repro(r, impl.name if key is not None else str(fn_or_spec), key is None, device, api)
    options = {"device": device, "dtypes": list(dtypes) if dtypes else
               [d for d in HOST_DTYPES.get(device, HOST_DTYPES["cpu"]) if d in impl.capabilities.dtypes],
               "dtypes_from": "option" if dtypes else "declared", "profile": profile,
               "suites": list(suites) if suites else "default", "properties": list(properties) if properties else None,
               "strict": strict, "seed": seed if seed is not None else DEFAULT_SEED,
               "forward_factor": FORWARD_FACTOR, "backward_factor": BACKWARD_FACTOR,
               "certify": certify, "reruns": reruns}
    results, certificates = C.split(results, certify)
    data = R.new_report(options, ["harness.check", impl.name], device)
    data["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data["implementations"] = [{
        "name": impl.name, "spec": spec if key is None else f"<in-process {impl.name}>",
        "verdict": C.verdict(verdict(results, strict), results, certificates), "description": impl.description,
        "capabilities": impl.capabilities.to_dict(), "duration_s": round(sum(r.get("duration_s") or 0 for r in results), 2),
        "results": results, "certificates": certificates,
        "fingerprint": next((r["worst"].get("fingerprint") for r in results
                             if r["property"] == "test_fingerprint" and r.get("worst")), None),
        "causes": triage(results + [c for c in certificates if c.get("enforced")], strict)}]
    if os.environ.get("ATTN_HARNESS_VALIDATE_REPORTS"):
        from harness.report.model import validate

        validate(json.loads(json.dumps(data, default=str)))
    return Report(data)


def _inprocess_repro(r: dict, name: str, is_spec: bool, device: str, api: str = "sdpa") -> str:
    """``harness.check(fn, ..., case=..., example=...)``: the call that replays this failure in
    the caller's interpreter (``fn`` is the function that was checked)."""
    from harness.cases import Case

    args = [repr(name) if is_spec else name, f"suites=[{r['suite']!r}]", f"properties=[{r['property']!r}]"]
    if r.get("dtype") and r["dtype"] != "-":
        args.append(f"dtypes=[{r['dtype']!r}]")
    if device != "cpu":
        args.append(f"device={device!r}")
    if api != "sdpa":
        args.append(f"api={api!r}")
    if r.get("seed") is not None:
        args.append(f"seed={r['seed']}")
    ce = r.get("counterexample")
    if isinstance(ce, dict):
        try:
            args.append(f"case={repr(Case(**ce))!r}")
        except TypeError:
            pass
        if r.get("counterexample_extra"):
            args.append(f"example={r['counterexample_extra']!r}")
    return f"harness.check({', '.join(args)})"


def _plugin_autoloaded() -> bool:
    # The entry point loads the plugin in every pytest run unless plugin autoloading is off.
    return not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")


def assert_passes(fn_or_spec: Any, *, report_dir: Union[str, os.PathLike, None] = None, **kwargs: Any) -> Report:
    """:func:`check`, raising ``AssertionError`` unless the verdict is ``pass``, with a message of
    at most 4,000 characters: the verdict, the causes (one line each, most telling first, each with
    the in-process call that replays it) and how to see every failure. With ``report_dir`` the
    report files (report.json, .md, .html) are written there and the message names the directory."""
    report = check(fn_or_spec, **kwargs)
    if report_dir is not None:
        from harness.report import writer

        writer.write_all(report.data, report_dir)
        report.path = Path(report_dir)
    if report.verdict != "pass":
        raise AssertionError(report.summary())
    return report
