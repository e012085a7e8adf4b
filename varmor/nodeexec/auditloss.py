"""How many audit records the kernel lost before the agent could read them.

A behaviour model learned from AppArmor records is silently incomplete when records are
lost, so the agent measures the loss in two independent ways. No I/O.

Gap counting (`SerialGapTracker`). Every kernel audit record carries `audit(ts:serial)`;
the serial comes from one global counter and is shared by the records of one event (an
AVC, its SYSCALL and PROCTITLE). Fed the serial of every record of a source that holds
every record (auditd's audit.log; the kernel log when no auditd runs), a serial that
never shows up is an event of which no record survived. It sees every loss that happens
after the kernel assigned the serial (kernel/audit.c):

- the printk rate limit (`kernel.printk_ratelimit`/`printk_ratelimit_burst`), which
  throttles records on their way to the kernel log when no auditd runs;
- the audit rate limit (`auditctl -r`), applied in `audit_log_end`, after the serial;
- drops between the kernel and the file (a syslog daemon's own rate limit), as any
  record missing from the file shows as a gap.

It cannot see:

- backlog drops (`auditctl -b`): `audit_log_start` refuses the record before it
  assigns a serial, so the counter shows no gap;
- an event that lost some of its records but not all (say, a suppressed AVC whose
  SYSCALL record got through): the serial is seen, so nothing is counted. It counts
  events, not records;
- loss in a source that does not hold every record: the kernel log while auditd runs
  holds almost none of them, and would read as a flood of loss. Feed it only a complete
  source.

Kernel reports (`parse_kernel_loss`), from the kernel log only:

- `kauditd_printk_skb: N callbacks suppressed`: N records the printk rate limit dropped,
  counted in records, not events. The kernel writes it only when the next rate-limited
  printk after the interval passes, so the count of the last burst appears late. The
  rate-limit state is shared by every `printk_ratelimit()` caller in the kernel, so N may
  include other callers' messages, and a count written under another caller's name is
  not read (per lib/ratelimit.c, a caller that finds the state's lock taken is dropped
  without being counted);
- `audit: audit_lost=N audit_rate_limit=R audit_backlog_limit=B`: the kernel's running
  total of records dropped inside the audit subsystem (backlog and rate limit alike, so
  also the backlog drops gap counting cannot see), but not the printk suppression above.
  It is itself printed through the printk rate limit (kernel/audit.c), so it shows up
  intermittently.

The same total is what `auditctl -s` reports as `lost`, but reading it needs
CAP_AUDIT_CONTROL in the initial PID namespace, which the agent does not have.

Measured in the kernel test VM (Debian 6.1 under qemu, no auditd; one run of
tests/kernel/test_kernel_auditloss.py): with `printk_ratelimit=0`, a burst of 200
AppArmor events lost nothing (serials 1..207 since boot all present). With
`printk_ratelimit=5`, `printk_ratelimit_burst=10`, the same burst plus a few events to
make the kernel report: 202 of 206 events lost every record (three each: AVC, SYSCALL,
PROCTITLE), one kept 2 of its 3, and the one `callbacks suppressed` line said 607, exactly
the records missing serial by serial. It came 3.4 s after the burst, with the first
record logged after the interval. No `audit_lost=` line appeared. Only 5 records got
through before the suppression, not 10: the interval then running had begun at boot,
whose 5 records had used half of its budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from varmor.nodeexec.audit import KERNEL_LOG_PREFIX

SERIAL_MODULUS = 1 << 32  # the kernel's serial is an unsigned 32-bit counter
_HALF = SERIAL_MODULUS >> 1


class SerialGapTracker:
    """Counts the serials that never appeared, once later serials have moved `window`
    past them (records of concurrent CPUs arrive out of order, so a missing serial may
    still show up). Memory is a `window`-bit mask, whatever the input.

    Serials are compared modulo 2**32, so the counter wrapping is no event. Tracking
    starts over, without counting a loss, on a serial more than `restart_gap` away from
    the highest seen, in either direction (a reboot, a log replaced by an older one, a
    forged line, which so adds at most `restart_gap` to `lost`; a real gap that wide is
    counted in `restarts`, not `lost`), and after `window` records in a row below the
    window (a restarted counter that had not got that far; a live stream's stragglers
    come one at a time, between current records). A lone record below the window is
    `late` and ignored: a record of an event decided long ago, such as the SYSCALL record
    of a syscall that blocked.
    Serials below the first one observed are never counted: tracking starts mid-stream.
    """

    def __init__(self, window: int = 1024, restart_gap: int = 1 << 20) -> None:
        if not 1 <= window <= restart_gap < _HALF:
            raise ValueError(f"need 1 <= window <= restart_gap < 2**31, got {window}, {restart_gap}")
        self.window = window
        self.restart_gap = restart_gap
        self._lost = 0
        self._late = 0
        self._restarts = 0
        self._high: int | None = None  # the highest serial seen, unwrapped
        self._floor = 0  # the lowest serial not decided yet, unwrapped
        self._seen = 0  # bit i: serial floor + i was seen
        self._late_run = 0  # records in a row below the window
        self._late_top = 0  # the highest of them, unwrapped

    @property
    def lost(self) -> int:
        """Serials decided as never seen: events of which no record was read."""
        return self._lost

    @property
    def late(self) -> int:
        """Records whose serial had already been decided (ignored)."""
        return self._late

    @property
    def restarts(self) -> int:
        """Times tracking started over (see the class)."""
        return self._restarts

    @property
    def pending(self) -> int:
        """Serials in the window, not decided yet."""
        return 0 if self._high is None else self._high - self._floor + 1

    def observe(self, serial: int) -> None:
        """One record's serial, in the order the source holds them."""
        if not 0 <= serial < SERIAL_MODULUS:
            raise ValueError(f"not a 32-bit audit serial: {serial}")
        if self._high is None:
            self._start(serial)
            return
        delta = (serial - self._high + _HALF) % SERIAL_MODULUS - _HALF
        if abs(delta) > self.restart_gap:
            self._restart(serial)
            return
        unwrapped = self._high + delta
        if unwrapped < self._floor:
            self._late += 1
            self._late_top = unwrapped if self._late_run == 0 else max(self._late_top, unwrapped)
            self._late_run += 1
            if self._late_run >= self.window:  # the highest, so no serial of the run is left behind
                self._restart(self._late_top % SERIAL_MODULUS)
            return
        self._late_run = 0
        if delta > 0:
            self._high = unwrapped
            self._decide(unwrapped - self.window + 1)
        self._seen |= 1 << (unwrapped - self._floor)
        self._rebase()

    def flush(self) -> None:
        """Decide every pending serial now (end of input, or a source quiet for long
        enough that no reordered record can still come): unseen ones count as lost."""
        if self._high is not None:
            self._decide(self._high + 1)
            self._rebase()

    def _start(self, serial: int) -> None:
        self._high = self._floor = serial
        self._seen = 1
        self._late_run = 0

    def _restart(self, serial: int) -> None:
        self._restarts += 1
        self._start(serial)

    def _decide(self, floor: int) -> None:
        """Move the window's lower end up to `floor`, counting the unseen serials passed."""
        step = floor - self._floor
        if step <= 0:
            return
        if step >= self.window:  # every bit of the mask is passed
            self._lost += step - self._seen.bit_count()
            self._seen = 0
        else:
            self._lost += step - (self._seen & ((1 << step) - 1)).bit_count()
            self._seen >>= step
        self._floor = floor

    def _rebase(self) -> None:
        """Keep the unwrapped numbers below 2**33 (only their differences matter)."""
        if self._high is not None and self._floor >= SERIAL_MODULUS:
            self._floor -= SERIAL_MODULUS
            self._high -= SERIAL_MODULUS


# The kernel's own lines about loss, anchored like the records: at the start of a kernel
# log line, so a process that logs the same words mid-line reports nothing.
_SUPPRESSED = re.compile(rf"^{KERNEL_LOG_PREFIX}kauditd_printk_skb: (?P<n>\d{{1,10}}) callbacks suppressed$")
_LOST_TOTAL = re.compile(
    rf"^{KERNEL_LOG_PREFIX}audit: audit_lost=(?P<n>\d{{1,10}}) "
    r"audit_rate_limit=\d{1,10} audit_backlog_limit=\d{1,10}$"
)


@dataclass(frozen=True)
class KernelLoss:
    """A kernel log line's report: `suppressed` records dropped since the last such
    line, or the `lost_total` of records dropped since boot."""

    kind: Literal["suppressed", "lost_total"]
    count: int


def parse_kernel_loss(line: str) -> KernelLoss | None:
    """What a kernel log line (dmesg or kern.log) reports as lost, or None."""
    line = line.rstrip("\r\n")
    match = _SUPPRESSED.match(line)
    if match is not None:
        return KernelLoss("suppressed", int(match["n"]))
    match = _LOST_TOTAL.match(line)
    if match is not None:
        return KernelLoss("lost_total", int(match["n"]))
    return None


class KernelLossCounter:
    """The kernel's reports added up: suppressed records summed, and the latest running
    total of `audit_lost` (it starts again from 0 at a reboot, so it is a reading, not a
    sum)."""

    def __init__(self) -> None:
        self.suppressed = 0
        self.lost_total: int | None = None

    def add(self, loss: KernelLoss) -> None:
        if loss.kind == "suppressed":
            self.suppressed += loss.count
        else:
            self.lost_total = loss.count
