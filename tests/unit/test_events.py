"""Event bodies: one shape for every role, and hostile text shown, never obeyed."""

from __future__ import annotations

import datetime as dt

from varmor.events import MAX_MESSAGE, ObjectRef, event_body, printable

NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)


def test_control_bidi_and_format_characters_are_escaped() -> None:
    hostile = "open /tmp/\x1b]0;pwned\x07 \u202eexe.txt \x9b2J \u200b \u061c\u2028\u2029\ufeff\u2060\xad\U000e0041"
    shown = printable(hostile)
    assert not any(ch in shown for ch in "\x1b\x07\u202e\x9b\u200b\u061c\u2028\u2029\ufeff\u2060\xad\U000e0041")
    assert "\\x1b" in shown
    assert "\\u202e" in shown
    assert printable("plain /usr/bin/ls, ümlaut") == "plain /usr/bin/ls, ümlaut"


def test_event_body_is_bounded_and_escaped() -> None:
    ref = ObjectRef(kind="VarmorPolicy", name="web", namespace="team-a", uid="u1")
    body = event_body(ref, "Warning", "Denied", "\x1b[2J" + "x" * 5000, component="agent", instance="node-1", now=NOW)
    assert len(body["message"]) == MAX_MESSAGE
    assert body["message"].startswith("\\x1b[2J")
    assert body["metadata"] == {"generateName": "web.", "namespace": "team-a"}
    assert body["involvedObject"]["namespace"] == "team-a"
    assert body["source"] == {"component": "varmor-agent", "host": "node-1"}
    assert body["reportingComponent"] == "varmor.org/agent"
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-12-01T12:00:00Z"


def test_cluster_scoped_objects_events_go_to_default() -> None:
    ref = ObjectRef(kind="VarmorClusterPolicy", name="base")
    body = event_body(ref, "Normal", "ProfileCreated", "ok", component="leader", instance="varmor-0", now=NOW)
    assert body["metadata"]["namespace"] == "default"
    assert "namespace" not in body["involvedObject"]
    assert body["source"] == {"component": "varmor-leader"}
