#!/bin/sh
# /init of varmor's kernel test guest (tests/kernel/). Runs every case under /cases in
# name order, writes results to the second serial port (ttyS1), dumps the kernel's
# AppArmor audit records, and powers off. Any crash ends the boot (panic=-1 plus
# qemu -no-reboot); the host bounds the whole boot with a timeout.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/shm /mnt && mount -t tmpfs tmpfs /dev/shm
# Every apparmor= audit record reaches dmesg (no auditd; printk would rate-limit them).
echo 0 > /proc/sys/kernel/printk_ratelimit
# perf_event_paranoid=2 makes kernel profiling a CAP_PERFMON question (Debian's 3
# would ask for CAP_SYS_ADMIN first), see vprobe's cap perfmon.
echo 2 > /proc/sys/kernel/perf_event_paranoid
hostname varmor-guest
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 9>/dev/ttyS1
. /lib/varmor/vh.sh

vh_emit "BOOT kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) apparmor=$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)"
/vprobe spawn-uid >/dev/null

for d in /cases/*/; do
  [ -f "$d/run.sh" ] || continue
  name=${d%/}; name=${name##*/}
  read -r up _ < /proc/uptime
  vh_emit "CASE $name t=$up"
  (cd "$d" && exec timeout "${VH_CASE_TIMEOUT:-60}" sh -c '. /lib/varmor/vh.sh; . ./run.sh') </dev/null
  rc=$?
  [ "$rc" -eq 0 ] || vh_emit "CASE-EXIT $name rc=$rc"
done

# Audit records leave through kauditd asynchronously: wait until the count settles.
last=-1
for _ in 1 2 3 4 5 6 7 8 9 10; do
  n=$(dmesg | grep -c 'apparmor=')
  [ "$n" = "$last" ] && break
  last=$n
  sleep 0.2
done
dmesg | grep 'apparmor=' | sed 's/^/AUDIT /' >&9
# varmor.dmesg=1 on the kernel command line: the whole kernel log too (test data).
case " $(cat /proc/cmdline) " in *" varmor.dmesg=1 "*) dmesg | sed 's/^/DMESG /' >&9 ;; esac
vh_emit "LOST $(dmesg | grep -c 'audit_lost=\|backlog limit exceeded\|printk limit')"
vh_emit "DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
exec 9>&-
/vprobe drain /dev/ttyS1
poweroff -f
