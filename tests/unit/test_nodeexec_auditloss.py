"""Lost audit records: serial-gap counting (reordering, restarts, wrap-around, bounded
memory) and the kernel's own loss lines, with forged look-alikes refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varmor.nodeexec.audit import parse_serial
from varmor.nodeexec.auditloss import (
    SERIAL_MODULUS,
    KernelLoss,
    KernelLossCounter,
    SerialGapTracker,
    parse_kernel_loss,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"


def tracked(serials: list[int], window: int = 1024, restart_gap: int = 1 << 20) -> SerialGapTracker:
    tracker = SerialGapTracker(window, restart_gap)
    for serial in serials:
        tracker.observe(serial)
    tracker.flush()
    return tracker


# -- parse_serial ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "serial"),
    [
        ("[    2.535876] audit: type=1300 audit(1795874336.184:6): arch=c000003e syscall=1", 6),
        ("[    0.540000] audit: type=2000 audit(0.540:1): state=initialized audit_enabled=1 res=1", 1),
        ("Nov 28 13:00:00 node-1 kernel: [ 1234.567890] audit: type=1327 audit(1764336000.900:88): proctitle=6C73", 88),
        ('2025-11-28T13:00:00.123456+00:00 node-1 kernel: audit: type=1400 audit(1.000:9): apparmor="DENIED"', 9),
        ("type=PROCTITLE msg=audit(1764336000.500:77): proctitle=6C73", 77),
        ("node=n1 type=SYSCALL msg=audit(1764336000.500:4294967295): arch=c000003e", 4294967295),
        ("type=UNKNOWN[1334] msg=audit(1764336000.500:78): prog-id=7 op=LOAD", 78),
        ("type=USER_AVC msg=audit(1764336000.500:79): pid=1 uid=0 msg='x'\x1dUID=\"root\"", 79),
    ],
)
def test_parse_serial_reads_every_record_type(line: str, serial: int) -> None:
    assert parse_serial(line) == serial


@pytest.mark.parametrize(
    "line",
    [
        # auditd numbers its own DAEMON_* records from a counter of its own
        "type=DAEMON_START msg=audit(1764336000.500:4242): op=start ver=3.0.9 res=success",
        "[    1.000000] audit: type=1203 audit(1.000:4242): op=rotate",
        # text a process logs, the stamp not at the start of the line
        'Nov 28 13:00:00 node-1 app[7]: audit: type=1400 audit(1.000:5): apparmor="DENIED"',
        "Nov 28 13:00:00 node-1 kernel: [ 1.0] foo audit: type=1300 audit(1.000:5): arch=c000003e",
        'x type=AVC msg=audit(1.000:5): apparmor="DENIED"',
        '[    1.000000] audit: type=1400 audit(1.000:5):apparmor="DENIED"',
        "[    1.000000] audit: type=1400 audit(1.000:4294967296): too big",
        "[    1.000000] audit: type=1400 audit(1.000:" + "9" * 5000 + "): absurd",
        "[    1.000000] audit: initializing netlink subsys (disabled)",
        "",
    ],
)
def test_parse_serial_refuses_the_rest(line: str) -> None:
    assert parse_serial(line) is None


def test_recorded_kernel_log_has_no_gap() -> None:
    """A stretch of a real guest's kernel log: every record has a serial, none missing."""
    lines = [ln for ln in (DATA / "dmesg-excerpt.log").read_text().splitlines() if " audit: type=" in ln]
    found = [parse_serial(ln) for ln in lines]
    assert None not in found
    assert len(found) > 30
    serials = [s for s in found if s is not None]
    assert set(serials) == set(range(min(serials), max(serials) + 1))
    assert tracked(serials).lost == 0


# -- parse_kernel_loss -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "loss"),
    [
        ("[    6.249207] kauditd_printk_skb: 607 callbacks suppressed", KernelLoss("suppressed", 607)),
        (
            "Nov 28 13:00:00 node-1 kernel: [ 12.5] kauditd_printk_skb: 3 callbacks suppressed\n",
            KernelLoss("suppressed", 3),
        ),
        (
            "2025-11-28T13:00:00+00:00 node-1 kernel: kauditd_printk_skb: 12 callbacks suppressed",
            KernelLoss("suppressed", 12),
        ),
        ("[   9.0] audit: audit_lost=41 audit_rate_limit=100 audit_backlog_limit=64", KernelLoss("lost_total", 41)),
        (
            "Nov  8 01:02:03 n kernel: audit: audit_lost=7 audit_rate_limit=0 audit_backlog_limit=8192",
            KernelLoss("lost_total", 7),
        ),
    ],
)
def test_parse_kernel_loss(line: str, loss: KernelLoss) -> None:
    assert parse_kernel_loss(line) == loss


@pytest.mark.parametrize(
    "line",
    [
        # a process's syslog message carrying the kernel's words
        "Nov 28 13:00:00 node-1 app[7]: kauditd_printk_skb: 99999 callbacks suppressed",
        "Nov 28 13:00:00 node-1 kernel: [ 1.0] x kauditd_printk_skb: 99999 callbacks suppressed",
        "[    1.0] audit: type=1107 audit(1.0:5): msg='kauditd_printk_skb: 9 callbacks suppressed'",
        "[    1.0] kauditd_printk_skb: 9 callbacks suppressed trailing",
        # other callers of the shared rate limit: not audit records
        "[    1.0] audit_log_lost: 9 callbacks suppressed",
        "[    1.0] audit: rate limit exceeded",
        "[    1.0] audit: backlog limit exceeded",
        "[    1.0] audit: audit_lost=5 audit_rate_limit=1",
        "[    1.0] kauditd_printk_skb: 99999999999 callbacks suppressed",
    ],
)
def test_parse_kernel_loss_refuses_the_rest(line: str) -> None:
    assert parse_kernel_loss(line) is None


def test_kernel_loss_counter_sums_suppressed_and_keeps_the_latest_total() -> None:
    counter = KernelLossCounter()
    assert (counter.suppressed, counter.lost_total) == (0, None)
    for loss in (
        KernelLoss("suppressed", 5),
        KernelLoss("lost_total", 10),
        KernelLoss("suppressed", 7),
        KernelLoss("lost_total", 3),  # a reboot: the running total starts again
    ):
        counter.add(loss)
    assert (counter.suppressed, counter.lost_total) == (12, 3)


# -- SerialGapTracker: examples ----------------------------------------------------------


def test_in_order_with_shared_serials_loses_nothing() -> None:
    assert tracked([1, 1, 1, 2, 2, 2, 3, 4, 4]).lost == 0


def test_a_gap_counts_once_the_window_has_passed_it() -> None:
    tracker = SerialGapTracker(window=4)
    for serial in (10, 11, 13):
        tracker.observe(serial)
    assert (tracker.lost, tracker.pending) == (0, 4)
    tracker.observe(14)  # 12 still within the window
    assert tracker.lost == 0
    tracker.observe(16)  # the window is 13..16: 12 is decided
    assert tracker.lost == 1
    tracker.flush()  # 15 too
    assert (tracker.lost, tracker.pending) == (2, 0)
    tracker.flush()
    assert tracker.lost == 2


def test_a_late_serial_within_the_window_is_no_loss() -> None:
    assert tracked([100, 102, 103, 101, 104], window=4).lost == 0


def test_a_record_behind_the_window_is_late_and_ignored() -> None:
    tracker = tracked([*range(1, 50), 3, 50], window=8)
    assert (tracker.lost, tracker.late, tracker.restarts) == (0, 1, 0)


def test_serials_below_the_first_are_never_counted() -> None:
    tracker = tracked([500, 498, 501], window=8)
    assert (tracker.lost, tracker.late) == (0, 1)


def test_wrap_around_is_no_restart() -> None:
    top = SERIAL_MODULUS - 1
    tracker = tracked([top - 2, top - 1, top, 0, 2, 3])
    assert (tracker.lost, tracker.restarts) == (1, 0)  # serial 1


def test_a_serial_far_below_restarts_without_loss() -> None:
    tracker = tracked([5_000_000, 5_000_001, 1, 2, 3])
    assert (tracker.lost, tracker.restarts) == (0, 1)


def test_a_reboot_before_the_counter_got_far_restarts_after_a_window() -> None:
    """1..300 then a new boot's 1..100: below the window, but a stream of its own."""
    tracker = tracked([*range(1, 301), *range(1, 101), 102], window=16)
    assert (tracker.lost, tracker.restarts) == (1, 1)  # 101, in the new boot


def test_a_forward_jump_beyond_the_restart_gap_restarts() -> None:
    tracker = tracked([1, 2, 3, 10_000, 10_001], window=16, restart_gap=1000)
    assert (tracker.lost, tracker.restarts) == (0, 1)


def test_a_forged_serial_adds_at_most_the_restart_gap() -> None:
    tracker = tracked([1, 2, 1002, 1003], window=16, restart_gap=1000)
    assert tracker.lost == 999


@pytest.mark.parametrize(("window", "gap"), [(0, 10), (10, 5), (1, 1 << 31)])
def test_bad_parameters_are_refused(window: int, gap: int) -> None:
    with pytest.raises(ValueError, match="window"):
        SerialGapTracker(window, gap)


@pytest.mark.parametrize("serial", [-1, SERIAL_MODULUS])
def test_not_a_serial_is_refused(serial: int) -> None:
    with pytest.raises(ValueError, match="serial"):
        SerialGapTracker().observe(serial)


# -- SerialGapTracker: properties ----------------------------------------------------------


@st.composite
def reordered(draw: st.DrawFn, window: int, removable: bool) -> tuple[list[int], int]:
    """Serials base+1..base+n (mod 2**32), each 1-3 times (the records of one event), a
    set of the inner ones removed, reordered by less than `window`; the lowest comes
    first (tracking cannot know of serials before the first). Returns them and how many
    were removed."""
    n = draw(st.integers(2, 300))
    base = draw(st.one_of(st.integers(0, SERIAL_MODULUS - 1), st.integers(SERIAL_MODULUS - 500, SERIAL_MODULUS - 1)))
    removed = draw(st.sets(st.integers(2, n - 1), max_size=n - 2)) if removable and n > 2 else set()
    records = [
        (i + draw(st.integers(0, window - 1)), i)
        for i in range(2, n + 1)
        if i not in removed
        for _ in range(draw(st.integers(1, 3)))
    ]
    order = [1] + [i for _, i in sorted(records)]
    return [(base + i) % SERIAL_MODULUS for i in order], len(removed)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64).flatmap(lambda w: st.tuples(st.just(w), reordered(w, removable=True))))
def test_exactly_the_removed_serials_are_lost(case: tuple[int, tuple[list[int], int]]) -> None:
    window, (serials, removed) = case
    # Wider than any gap the removals make (at most 300 serials): a gap is never a restart.
    tracker = tracked(serials, window=window, restart_gap=1024)
    assert (tracker.lost, tracker.late, tracker.restarts) == (removed, 0, 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64).flatmap(lambda w: st.tuples(st.just(w), reordered(w, removable=False))))
def test_reordering_alone_never_counts(case: tuple[int, tuple[list[int], int]]) -> None:
    window, (serials, _) = case
    tracker = SerialGapTracker(window, window * 8)
    for serial in serials:
        tracker.observe(serial)
        assert tracker.lost == 0
    tracker.flush()
    assert tracker.lost == 0


WINDOW, GAP = 16, 256


@st.composite
def restarted(draw: st.DrawFn) -> list[int]:
    """Complete streams one after another (each reordered by less than the window), every
    new one starting where a restarted counter could: at or below the highest serial
    so far, or more than the restart gap away."""
    out: list[int] = []
    high: int | None = None
    for _ in range(draw(st.integers(1, 5))):
        start = draw(st.integers(0, SERIAL_MODULUS - 1))
        if high is not None:
            ahead = (start - high) % SERIAL_MODULUS
            if 0 < ahead <= GAP:
                start = (high - draw(st.integers(0, 3 * WINDOW))) % SERIAL_MODULUS
        n = draw(st.integers(1, 120))
        keyed = sorted((i + draw(st.integers(0, WINDOW - 1)), i) for i in range(1, n))
        out += [(start + i) % SERIAL_MODULUS for i in [0] + [i for _, i in keyed]]
        high = (start + n - 1) % SERIAL_MODULUS
    return out


@settings(max_examples=500, deadline=None)
@given(restarted())
def test_restarts_never_count(serials: list[int]) -> None:
    assert tracked(serials, window=WINDOW, restart_gap=GAP).lost == 0


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 128),
    st.lists(
        st.one_of(
            st.integers(0, SERIAL_MODULUS - 1),
            st.integers(0, 3000),
            st.integers(SERIAL_MODULUS - 3000, SERIAL_MODULUS - 1),
        ),
        max_size=400,
    ),
)
def test_memory_and_each_lines_effect_are_bounded(window: int, serials: list[int]) -> None:
    """Whatever the input: the mask holds at most `window` bits, the unwrapped numbers
    stay small, and one record adds at most the restart gap to `lost`."""
    gap = window * 4
    tracker = SerialGapTracker(window, gap)
    for serial in serials:
        before = tracker.lost
        tracker.observe(serial)
        assert tracker.lost - before <= gap
        assert 0 <= tracker.pending <= window
        assert tracker._seen < 1 << window
        assert tracker._high is not None
        assert 0 <= tracker._floor <= tracker._high + 1 < 2 * SERIAL_MODULUS
    tracker.flush()
    assert tracker._seen == 0
