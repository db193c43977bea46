"""The report's shape is defined once (harness/report/model.py); the shipped JSON Schema, the
README's field list and every written report agree with it."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from harness import report as R
from harness.report.model import json_schema, schema_fields_markdown, shipped_schema, validate

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_schema_is_generated_from_the_classes():
    assert shipped_schema() == json_schema(), "run `python -m harness.report.model` to regenerate the schema"
    jsonschema.Draft202012Validator.check_schema(shipped_schema())


def test_readme_field_list_matches_the_schema():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- schema:begin -->\n(.*?)\n<!-- schema:end -->", text, re.S)
    assert block, "README lost its schema block"
    assert block.group(1) == schema_fields_markdown()


@pytest.mark.slow  # a whole `attn-harness check` run
def test_a_real_report_validates_and_is_readable_by_others(tmp_path):
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "harness", "check", "--impl", "sdpa", "--impl",
                        "fixtures/planted.py:causal_leaks_next", "--suite", "causal", "--profile", "quick",
                        "--dtype", "float32", "--report-dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md")))
    assert r.returncode == 1, r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    validate(rep)
    for name in ("report.json", "report.md", "report.html"):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode & stat.S_IROTH and mode & stat.S_IRGRP, f"{name} mode {oct(mode)}"
    # GitHub Actions' job summary gets the matrix.
    summary = (tmp_path / "summary.md").read_text()
    assert "causal::test_future_perturbation_invariance" in summary and "FAIL" in summary


def test_drift_is_caught():
    rep = R.new_report({"device": "cpu", "dtypes": ["float32"], "profile": "quick", "suites": "default",
                        "strict": False, "seed": 1, "forward_factor": 2.0, "backward_factor": 3.0})
    validate(rep)
    rep["options"]["undocumented"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(rep)
