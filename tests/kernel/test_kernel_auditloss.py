"""Audit records the kernel loses, counted by varmor.nodeexec.auditloss on a real kernel.

Why: a behaviour model learned from the kernel log is silently incomplete when records
are dropped, and the two ways the agent can tell (serial gaps, and the kernel's own
`callbacks suppressed` lines) must agree on what really happened. One boot: a burst of
AppArmor records with the guest's printk rate limit off (nothing may be lost), then the
same burst with `printk_ratelimit=5`, `printk_ratelimit_burst=10` (records are lost), and
the whole kernel log is read back on the host.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import aavm
import pytest

from varmor.nodeexec.audit import parse_serial
from varmor.nodeexec.auditloss import KernelLossCounter, SerialGapTracker, parse_kernel_loss

pytestmark = pytest.mark.kernel

BURST = 200  # events per burst: one open of an audited file each
RECORDS_PER_EVENT = 3  # the AVC, and the SYSCALL and PROCTITLE records audit=1 adds
SYSCTL = "/proc/sys/kernel"

PROFILE = """abi <abi/3.0>,
include <tunables/global>
profile vk-burst flags=(attach_disconnected) {
  file,
  capability,
  network,
  signal,
  ptrace,
  audit /tmp/burst/** r,
}
"""

#: The case's helper, a script so that `Case.run` (a `sh -c`) can call it.
#:   burst N FILE   N opens of FILE by one process under vk-burst: N events
#:   settled FILE   wait until every record of the last open of FILE is in the kernel log
#:   reported FILE  open FILE under vk-burst now and then, until a record of FILE follows
#:                  the last `callbacks suppressed` line: the kernel reports suppressed
#:                  records only at the first rate-limited printk after the interval, so
#:                  something must log, and a record of FILE there means the report
#:                  covers the whole burst (records leave in order), with none pending
HELPER = r"""set -u
tries=600  # polls 0.1 s apart: the case's own timeout (60 s) comes first
case $1 in
  burst)
    exec sh -c 'echo "exec vk-burst" > /proc/self/attr/exec && exec /bin/sh "$0" loop "$1" "$2"' "$0" "$2" "$3" ;;
  loop)
    i=0
    while [ "$i" -lt "$2" ]; do : < "$3"; i=$((i + 1)); done ;;
  settled)
    while [ "$tries" -gt 0 ]; do
      s=$(dmesg | sed -n "s|.*audit([0-9.]*:\([0-9]*\)): apparmor=\"AUDIT\" .* name=\"$2\" .*|\1|p" | tail -n 1)
      [ -n "$s" ] && [ "$(dmesg | grep -c "audit([0-9.]*:$s): ")" -ge 3 ] && exit 0
      tries=$((tries - 1)); sleep 0.1
    done
    echo "records of $2 not all in the kernel log"; exit 1 ;;
  reported)
    while [ "$tries" -gt 0 ]; do
      dmesg | awk -v f="name=\"$2\"" '
        /kauditd_printk_skb: [0-9]+ callbacks suppressed/ { seen = 1; after = 0 }
        index($0, f) { after = 1 }
        END { exit !(seen && after) }' && exit 0
      [ $((tries % 5)) -eq 0 ] && sh "$0" burst 1 "$2"
      tries=$((tries - 1)); sleep 0.1
    done
    echo "no callbacks suppressed line"; exit 1 ;;
esac
"""


def build() -> aavm.Batch:
    b = aavm.Batch("auditloss")
    c = b.case("printk-ratelimit")
    helper = c.add_file("loss.sh", HELPER)
    files = " ".join(f"/tmp/burst/{n}" for n in ("f", "t", "end1", "end2"))
    c.sh(f"mkdir -p /tmp/burst && for f in {files}; do echo x > $f; done")
    c.sh(f"VK_RL=$(cat {SYSCTL}/printk_ratelimit) VK_RB=$(cat {SYSCTL}/printk_ratelimit_burst)")
    c.load_bin("load", "p.bin", PROFILE)
    # The guest boots with printk_ratelimit=0: a burst must lose nothing.
    c.run("unlimited-burst", f"sh {helper} burst {BURST} /tmp/burst/f")
    c.run("unlimited-end", f"sh {helper} burst 1 /tmp/burst/end1 && sh {helper} settled /tmp/burst/end1")
    c.run("limit", f"echo 5 > {SYSCTL}/printk_ratelimit && echo 10 > {SYSCTL}/printk_ratelimit_burst")
    c.run("limited-burst", f"sh {helper} burst {BURST} /tmp/burst/f")
    c.run("suppression-reported", f"sh {helper} reported /tmp/burst/t")
    # Restore before the last event, so its records cannot be suppressed.
    c.sh(f'echo "$VK_RL" > {SYSCTL}/printk_ratelimit; echo "$VK_RB" > {SYSCTL}/printk_ratelimit_burst')
    c.run("restored", f"[ $(cat {SYSCTL}/printk_ratelimit) = 0 ]")
    c.run("limited-end", f"sh {helper} burst 1 /tmp/burst/end2 && sh {helper} settled /tmp/burst/end2")
    c.sh("dmesg | grep audit | sed 's/^/KLOG /' >&9")
    return b


BATCH = build()


@pytest.fixture(scope="module")
def boot(kernel_boot: Callable[[aavm.Batch], aavm.BootResult]) -> aavm.BootResult:
    return kernel_boot(BATCH)


@pytest.fixture(scope="module")
def klog(boot: aavm.BootResult) -> list[str]:
    """The guest's kernel log lines that mention audit, in log order."""
    stripped = (raw.strip("\r\n\x00 ") for raw in boot.results_raw.splitlines())
    lines = [line[5:] for line in stripped if line.startswith("KLOG ")]
    assert lines, boot.failure_context()
    return lines


def marker_serial(lines: list[str], name: str) -> int:
    """The serial of the event that opened `name`."""
    hits = [parse_serial(ln) for ln in lines if f'name="{name}"' in ln]
    assert len(hits) == 1, hits
    assert hits[0] is not None, hits
    return hits[0]


def serials(lines: list[str], low: int, high: int) -> list[int]:
    """The serials of the records in (low, high], in log order."""
    return [s for s in map(parse_serial, lines) if s is not None and low < s <= high]


def gaps(found: list[int]) -> int:
    tracker = SerialGapTracker()
    for serial in found:
        tracker.observe(serial)
    tracker.flush()
    assert (tracker.restarts, tracker.late) == (0, 0)
    return tracker.lost


@pytest.mark.parametrize("check_id", BATCH.check_ids())
def test_check(boot: aavm.BootResult, check_id: str) -> None:
    aavm.assert_check(boot, check_id)


def test_nothing_lost_without_rate_limit(klog: list[str]) -> None:
    """printk_ratelimit=0: every serial from boot to the end of the first burst appears,
    and the kernel reports no suppression."""
    end = marker_serial(klog, "/tmp/burst/end1")
    found = serials(klog, 0, end)
    burst = [ln for ln in klog if 'name="/tmp/burst/f"' in ln and (parse_serial(ln) or 0) < end]
    assert len(burst) == BURST
    assert gaps(found) == 0
    before = klog[: max(i for i, ln in enumerate(klog) if parse_serial(ln) == end)]
    assert [ln for ln in before if parse_kernel_loss(ln)] == []


def test_rate_limit_loss_seen_both_ways(boot: aavm.BootResult, klog: list[str]) -> None:
    """printk_ratelimit=5, burst 10: records are lost; the serial gaps count the events of
    which nothing was printed, the kernel's `callbacks suppressed` lines the records, and
    the two agree record for record: every serial of the limited stretch is missing
    exactly the records the kernel says it suppressed."""
    low, high = marker_serial(klog, "/tmp/burst/end1"), marker_serial(klog, "/tmp/burst/end2")
    found = serials(klog, low, high)
    counter = KernelLossCounter()
    for line in klog:
        loss = parse_kernel_loss(line)
        if loss is not None:
            counter.add(loss)
    per_serial = Counter(found)
    assert max(per_serial.values()) <= RECORDS_PER_EVENT
    missing_records = sum(RECORDS_PER_EVENT - per_serial[s] for s in range(low + 1, high + 1))
    missing_events = sum(1 for s in range(low + 1, high + 1) if s not in per_serial)
    lost = gaps(found)
    summary = (
        f"serials {low + 1}..{high}: {len(found)} records printed, {lost} events lost, "
        f"{counter.suppressed} records suppressed, {missing_records} missing"
    )
    assert lost > 0, summary
    assert lost == missing_events, summary
    assert counter.suppressed == missing_records, summary
    assert RECORDS_PER_EVENT * lost <= counter.suppressed, summary
    # The kernel's own loss counter (audit_lost) does not count printk suppression.
    assert counter.lost_total is None
    assert "LOST 0" in boot.results_raw, boot.failure_context()
