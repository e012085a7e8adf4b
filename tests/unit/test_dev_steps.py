"""A long setup step shows what it does, its progress and its time; a cached one is quiet;
a failed one shows the tail of its log and where the whole log is."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from varmor.dev.steps import Step

PY = sys.executable


def test_a_long_step_is_announced_with_its_progress_and_its_time(tmp_path: Path) -> None:
    out = io.StringIO()
    script = "import sys\nfor i in range(3): print('compiled', i, file=sys.stderr)\nprint('/built/here')"
    step = Step("control plane", "7 min", tmp_path / "cp.log", out=out, quiet_after=0.0, report_every=0.0)
    rc, output = step.run([PY, "-c", script])
    assert (rc, output) == (0, "/built/here\n")  # stdout passed through, for the caller
    text = out.getvalue()
    assert "setup: control plane: running (usually 7 min on a 2-core machine; log: " in text
    assert "setup: control plane: done in " in text
    assert "(3 steps)" in text
    assert (tmp_path / "cp.log").read_text() == "compiled 0\ncompiled 1\ncompiled 2\n"


def test_a_cached_step_prints_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    rc, output = Step("kernel", "10 s", tmp_path / "k.log", out=out, quiet_after=600.0).run([PY, "-c", "print('ok')"])
    assert (rc, output, out.getvalue()) == (0, "ok\n", "")


def test_a_failed_step_shows_the_tail_of_its_log_and_where_it_is(tmp_path: Path) -> None:
    out = io.StringIO()
    script = "import sys\nfor i in range(40): print('line', i, file=sys.stderr)\nsys.exit(3)"
    rc, _ = Step("promtool", "3 min", tmp_path / "p.log", out=out, quiet_after=600.0).run([PY, "-c", script])
    text = out.getvalue()
    assert rc == 3
    assert "setup: promtool: FAILED (exit 3)" in text
    assert "    line 39" in text
    assert "    line 14" not in text  # only the tail
    assert f"setup: the full log: {tmp_path / 'p.log'}" in text
