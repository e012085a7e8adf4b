"""The words each kind of raw rule accepts (varmor.profile.raw): capabilities, rlimits,
signals and network families of the pinned kernel ABI (varmor/data/apparmor-features),
socket types, protocols, mount options and access modes of apparmor.d(5). A word
outside these is refused by the grammar, not left for the parser to interpret.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


CAPS = _words(
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
    "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio "
    "sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time "
    "sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog "
    "wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore"
)
RLIMITS = _words("cpu fsize data stack core rss nproc nofile memlock as locks sigpending msgqueue nice rtprio rttime")
SIGNALS = _words(
    "hup int quit ill trap abrt bus fpe kill usr1 segv usr2 pipe alrm term stkflt chld cont stop "
    "stp ttin ttou urg xcpu xfsz vtalrm prof winch io pwr sys emt lost exists"
) | {f"rtmin+{n}" for n in range(33)}
MOUNT_OPTIONS = _words(
    "ro r read-only rw w suid nosuid dev nodev exec noexec sync async remount mand nomand dirsync "
    "atime noatime diratime nodiratime bind B move M rbind R verbose silent loud acl noacl "
    "unbindable make-unbindable runbindable make-runbindable private make-private rprivate "
    "make-rprivate slave make-slave rslave make-rslave shared make-shared rshared make-rshared "
    "relatime norelatime iversion noiversion strictatime nostrictatime lazytime nolazytime user "
    "nouser"
)
ACCESS = {
    "ptrace": frozenset({"r", "w", "rw", "read", "trace", "readby", "tracedby"}),
    "signal": frozenset({"r", "w", "rw", "send", "receive"}),
    "unix": _words(
        "create bind listen accept connect shutdown getattr setattr getopt setopt send receive r w rw read write"
    ),
}
SOCKET_TYPES = frozenset({"stream", "dgram", "seqpacket", "rdm", "raw", "packet"})
NETWORK = (
    _words(
        "unspec unix inet ax25 ipx appletalk netrom bridge atmpvc x25 inet6 rose netbeui security key "
        "netlink packet ash econet atmsvc rds sna irda pppox wanpipe llc ib mpls can tipc bluetooth iucv "
        "rxrpc isdn phonet ieee802154 caif alg nfc vsock kcm qipcrtr smc xdp"
    )
    | SOCKET_TYPES
    | {"tcp", "udp", "icmp"}
)

# Words that make apparmor_parser reach other profiles or files wherever they stand; the
# agent refuses any profile text holding one as a word (varmor.profile.trust), so no
# rule varmor accepts may hold one either, not even where a free word is allowed (a mount
# source): an accepted rule the agents refuse would unload the profile.
PROFILE_KEYWORDS = frozenset({"change_profile", "change_hat", "hat", "profile", "include", "if"})
KEYWORD_PREFIXES = ("include", "^", "#")
# The longest rule line the agent accepts (varmor.profile.trust): one bound for both.
MAX_RULE_LINE = 8192


def is_profile_keyword(word: str) -> bool:
    return word in PROFILE_KEYWORDS or word.startswith(KEYWORD_PREFIXES)
