#!/bin/sh
# The node's init (under tini, which reaps orphans): mounts, network, containerd, the
# kubelet and varmor's agent, with this boot's settings from the config disk (/dev/vdb, a
# tar). A control loop on the second serial port runs the host's commands (tests read
# /proc and securityfs through it) and reboots on request. Nothing polls: every wait is
# bounded and blocks in the program waited for.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t securityfs securityfs /sys/kernel/security
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+cpuset +cpu +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
mount --make-rshared /
echo 1 > /proc/sys/kernel/sysrq
echo 0 > /proc/sys/kernel/printk_ratelimit
echo 1 > /proc/sys/net/ipv4/ip_forward

mkdir -p /run/varmor
tar -x -f /dev/vdb -C /run/varmor
. /run/varmor/node.env
hostname "$NODE_NAME"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "BOOT $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0

containerd --config /etc/containerd/config.toml > /var/log/containerd.log 2>&1 &
for _ in $(seq 1 300); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.1; done
for image in /var/lib/varmor/images/*.tar $IMAGE_DEVICES; do
  ctr -n k8s.io images import "$image" > /dev/null 2>> /var/log/varmor-images.log
done
echo "CONTAINERD $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0

# The kernel's audit records to /var/log/audit/audit.log, as on a node with auditd.
mkdir -p /var/log/audit
auditd > /dev/null 2>&1

# The agent: the chart's arguments, the chart's agent token (see tests/node/nodevm.py),
# restarted when it exits, as the kubelet restarts a DaemonSet's pod. None when the chart's
# own DaemonSet runs it from the image.
if [ -n "$AGENT_ARGS" ]; then
  (
    while :; do
      PYTHONPATH=/run/varmor/src:/opt/varmor/lib python3 -m varmor.cli $AGENT_ARGS >> /var/log/varmor-agent.log 2>&1
      echo "agent exited: $?" >> /var/log/varmor-agent.log
      sleep 1
    done
  ) &
fi

kubelet --config=/etc/kubernetes/kubelet.yaml --kubeconfig=/run/varmor/kubelet.kubeconfig \
  --hostname-override="$NODE_NAME" --node-ip=10.0.2.15 $KUBELET_ARGS > /var/log/kubelet.log 2>&1 &
echo "STARTED $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0

# The host's commands: "<id> <shell command>" in, "OUT <id> <line>"... "RC <id> <code>" out.
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3<>/dev/ttyS1
echo "READY $(cut -d' ' -f1 /proc/uptime)" >&3
while read -r id cmd <&3; do
  [ -n "$id" ] || continue
  sh -c "$cmd" > /tmp/ctl.out 2>&1 < /dev/null
  rc=$?
  [ -z "$(tail -c1 /tmp/ctl.out)" ] || echo >> /tmp/ctl.out  # end a last line without newline
  sed "s/^/OUT $id /" /tmp/ctl.out >&3
  echo "RC $id $rc" >&3
done
