"""Regenerate tests/data/audit/*.log from a real boot (not a test; run by hand).

Why: the agent's violation parser must be tested on what the kernel really writes, not
on lines typed from documentation. This boots the harness and rules batches with the
whole kernel log captured, and keeps, per file, the first record of each distinct
(operation, class of peer) so the files stay small and cover every record shape seen:

    .venv/bin/python tests/kernel/record_audit.py

Files: denied.log (apparmor="DENIED"), audit.log ("AUDIT"), allowed.log ("ALLOWED",
complain mode), child-profile.log (records of child profiles, `parent//child`),
hex-name.log (a name logged hex-encoded), status.log (profile loads, replaces and
removals) and dmesg-excerpt.log (an unfiltered stretch of the kernel log, with the
SYSCALL/PROCTITLE records audit=1 adds, which the parser must skip).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

import aavm  # noqa: E402
import test_kernel_harness  # noqa: E402
import test_kernel_rules  # noqa: E402

OUT = HERE.parents[0] / "data" / "audit"
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


def shape(line: str) -> tuple[str, ...]:
    """What makes a record different for a parser: action, operation, which optional
    fields it has, and whether the profile is a child."""
    fields = dict(_FIELD.findall(line.split("): ", 1)[-1]))
    keys = tuple(sorted(k for k in fields if k not in {"pid", "profile", "name", "comm"}))
    child = "//" in fields.get("profile", "")
    return (fields.get("apparmor", ""), fields.get("operation", ""), str(child), *keys)


def pick(lines: list[str], want: str) -> list[str]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for line in lines:
        if want not in line:
            continue
        key = shape(line)
        if key not in seen:
            seen.add(key)
            out.append(line)
    return out


def main() -> int:
    audit: list[str] = []
    dmesg: list[str] = []
    for batch in (test_kernel_harness.BATCH, test_kernel_rules.BATCH):
        res = batch.run(dmesg=True)
        if not res.done:
            print(res.failure_context(), file=sys.stderr)
            return 1
        audit += res.audit_lines
        dmesg += [ln.strip()[6:] for ln in res.results_raw.splitlines() if ln.startswith("DMESG ")]
    OUT.mkdir(parents=True, exist_ok=True)
    records = [ln for ln in audit if 'apparmor="STATUS"' not in ln]
    files = {
        "denied.log": pick(records, 'apparmor="DENIED"'),
        "audit.log": pick(records, 'apparmor="AUDIT"'),
        "allowed.log": pick(records, 'apparmor="ALLOWED"'),
        "child-profile.log": pick([ln for ln in records if re.search(r'profile="[^"]*//', ln)], "apparmor="),
        "hex-name.log": [ln for ln in records if re.search(r" name=[0-9A-F]{8,} ", ln)][:3],
        "status.log": pick([ln for ln in audit if 'apparmor="STATUS"' in ln], "apparmor="),
    }
    start = next(i for i, ln in enumerate(dmesg) if 'apparmor="DENIED"' in ln)
    files["dmesg-excerpt.log"] = dmesg[max(0, start - 10) : start + 30]
    for name, lines in files.items():
        (OUT / name).write_text("\n".join(lines) + "\n")
        print(f"{name}: {len(lines)} lines")
    return 0


if __name__ == "__main__":
    assert aavm  # imported for its side effect on sys.path users
    raise SystemExit(main())
