#!/bin/sh
# Stage 1 (the initramfs): load the modules the node needs (the Debian kernel builds them
# all as modules), mount the node's disk and hand over to its init. Modules stay loaded.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m" 2>/dev/null || echo "stage1: insmod $m failed" >/dev/console; done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || { echo "stage1: cannot mount /dev/vda" >/dev/console; sleep 5; echo o > /proc/sysrq-trigger; }
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /usr/bin/tini -s -g -- /sbin/varmor-node-init
