"""The node agent: loads, replaces and unloads varmor's AppArmor profiles in this node's
kernel, reports what it has in the node's ArmorNode, and reports violations."""
