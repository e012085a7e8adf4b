/*
 * vprobe: the probe helper of varmor's kernel test layer (tests/kernel/).
 *
 * It runs inside the qemu guest as root and performs ONE operation, reporting whether
 * the kernel allowed it.  It is compiled statically (gcc -static) so it needs nothing
 * from the guest and can be copied to other paths to act as a distinct executable.
 *
 *   vprobe [-p PROFILE] [-t TARGET] OP ARGS...
 *
 *   -p PROFILE  write "exec PROFILE" to /proc/self/attr/exec and re-exec itself, so the
 *               operation runs confined, after a NEW exec (as a container process would).
 *   -t TARGET   then execve(TARGET, OP ARGS...): TARGET is a copy of vprobe at another
 *               path, so the operation runs in whatever profile the exec transition of the
 *               current profile lands in (child profiles, `cx ->`).
 *
 * Output: "LABEL <current label>" then exactly one line
 *   RESULT ALLOW [detail]          the operation passed the kernel's checks
 *   RESULT DENY errno=N (detail)   it failed with EACCES or EPERM
 *   RESULT ERROR errno=N (detail)  it failed for another reason: proves nothing
 * Exit status: 0 ALLOW, 1 DENY, 2 ERROR.
 *
 * See rules/README.md for the operation vocabulary and tests/kernel/README.md for how
 * each capability is proven.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/netlink.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/acct.h>
#include <sys/epoll.h>
#include <sys/io.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif
#ifndef CAP_CHECKPOINT_RESTORE
#define CAP_CHECKPOINT_RESTORE 40
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif

/* uid/gid owning the fixture files and the helper process started by spawn-uid. */
#define OTHER_ID 1000
#define UID_PIDFILE "/run/vprobe-uid1000.pid"

static int serve_mode; /* in serve mode results go to stdout and we keep running */

/* ---- reporting ------------------------------------------------------------------ */

static void print_label(void)
{
	char buf[512];
	ssize_t n = -1;
	int fd = open("/proc/self/attr/current", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
	}
	if (n <= 0) {
		strcpy(buf, "?");
		n = 1;
	}
	buf[n] = 0;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\0'))
		buf[--n] = 0;
	printf("LABEL %s\n", buf);
}

static int is_denial(int e) { return e == EACCES || e == EPERM; }

/* Result of one operation: 0 allow, 1 deny, 2 error. */
static int report(int verdict, int err, const char *fmt, ...)
{
	char detail[512] = "";
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	print_label();
	if (verdict == 0) {
		if (err)
			printf("RESULT ALLOW errno=%d (%s: %s)\n", err, detail, strerror(err));
		else if (detail[0])
			printf("RESULT ALLOW (%s)\n", detail);
		else
			printf("RESULT ALLOW\n");
	} else {
		printf("RESULT %s errno=%d (%s: %s)\n", verdict == 1 ? "DENY" : "ERROR", err, detail,
		       strerror(err));
	}
	fflush(stdout);
	return verdict;
}

static int allow(const char *detail) { return report(0, 0, "%s", detail); }

/* Classify a failed syscall: EACCES/EPERM deny, anything else is an error. */
static int failed(int e, const char *what) { return report(is_denial(e) ? 1 : 2, e, "%s", what); }

/* For operations whose LSM hook runs before the step that failed (socket family or
 * filesystem type not built into the guest kernel): the error proves the kernel's
 * security check passed. */
static int failed_after_lsm(int e, const char *what, const int *after, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (after[i] == e)
			return report(0, e, "%s, after the LSM check", what);
	return failed(e, what);
}

/* ---- small helpers -------------------------------------------------------------- */

static char tmp_path[256];

static const char *tmpfile_path(const char *tag)
{
	snprintf(tmp_path, sizeof(tmp_path), "/tmp/vprobe-%s-%d", tag, (int)getpid());
	return tmp_path;
}

static int make_file(const char *path, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return -1;
	if (write(fd, "x\n", 2) != 2) {
		close(fd);
		return -1;
	}
	close(fd);
	return chmod(path, mode);
}

static void mkdir_p(const char *path)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			mkdir(buf, 0755);
			*p = '/';
		}
	}
	mkdir(buf, 0755);
}

/* Drop CAP_SYS_ADMIN from the effective set (always permitted), so that operations
 * that accept "CAP_X or CAP_SYS_ADMIN" are decided by CAP_X alone.
 * The sets come from /proc/self/status, not capget(2): under a confined profile
 * AppArmor's capget hook masks out the capabilities the profile denies, and writing
 * that back would drop CAP_X from our own sets, so commoncap (not AppArmor) would
 * refuse it and no AppArmor audit record would be written. */
static int read_capset(const char *key, unsigned long long *out)
{
	char line[256];
	size_t klen = strlen(key);
	FILE *f = fopen("/proc/self/status", "r");
	int found = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, klen) == 0 && sscanf(line + klen, " %llx", out) == 1)
			found = 0;
	fclose(f);
	return found;
}

static int drop_sys_admin(void)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	unsigned long long eff, prm, inh;
	if (read_capset("CapEff:", &eff) || read_capset("CapPrm:", &prm) ||
	    read_capset("CapInh:", &inh))
		return -1;
	eff &= ~(1ULL << CAP_SYS_ADMIN);
	data[0].effective = (unsigned)eff;
	data[1].effective = (unsigned)(eff >> 32);
	data[0].permitted = (unsigned)prm;
	data[1].permitted = (unsigned)(prm >> 32);
	data[0].inheritable = (unsigned)inh;
	data[1].inheritable = (unsigned)(inh >> 32);
	return (int)syscall(SYS_capset, &hdr, data);
}

static pid_t other_uid_pid(void)
{
	FILE *f = fopen(UID_PIDFILE, "r");
	int pid = 0;
	if (!f)
		return -1;
	if (fscanf(f, "%d", &pid) != 1)
		pid = -1;
	fclose(f);
	return pid;
}

/* Run fn in a forked child (for operations that change process state the caller must
 * keep, such as the controlling tty); the child's errno comes back as exit status. */
static int in_child(int (*fn)(void))
{
	pid_t pid = fork();
	int st;
	if (pid < 0)
		return -1;
	if (pid == 0)
		_exit(fn() == 0 ? 0 : (errno & 0x7f) | 0x80);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
		return -1;
	if (WEXITSTATUS(st) == 0)
		return 0;
	errno = WEXITSTATUS(st) & 0x7f;
	return -1;
}

/* ---- file operations ------------------------------------------------------------ */

static int op_read(int argc, char **argv)
{
	char c;
	if (argc < 1)
		return report(2, EINVAL, "usage: read PATH");
	int fd = open(argv[0], O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return failed(errno, "open");
	if (read(fd, &c, 1) < 0 && is_denial(errno)) {
		int e = errno;
		close(fd);
		return failed(e, "read");
	}
	close(fd);
	return allow("");
}

static int op_write(int argc, char **argv)
{
	if (argc < 1)
		return report(2, EINVAL, "usage: write PATH");
	int fd = open(argv[0], O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return failed(errno, "open");
	close(fd);
	return allow("");
}

static int op_create(int argc, char **argv)
{
	if (argc < 1)
		return report(2, EINVAL, "usage: create PATH");
	int fd = open(argv[0], O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return failed(errno, "open O_CREAT");
	close(fd);
	unlink(argv[0]); /* best effort: keep repeated probes independent */
	return allow("");
}

static int op_link(int argc, char **argv)
{
	if (argc < 2)
		return report(2, EINVAL, "usage: link SRC DST");
	unlink(argv[1]);
	if (link(argv[0], argv[1]) != 0)
		return failed(errno, "link");
	unlink(argv[1]);
	return allow("");
}

static int op_chmod(int argc, char **argv)
{
	if (argc < 2)
		return report(2, EINVAL, "usage: chmod PATH MODE");
	if (chmod(argv[0], (mode_t)strtol(argv[1], NULL, 8)) != 0)
		return failed(errno, "chmod");
	return allow("");
}

static int op_exec(int argc, char **argv)
{
	int pfd[2];
	if (argc < 1)
		return report(2, EINVAL, "usage: exec PATH [ARGS...]");
	if (pipe2(pfd, O_CLOEXEC) != 0)
		return report(2, errno, "pipe");
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return report(2, errno, "fork");
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
			dup2(devnull, 2);
		}
		execv(argv[0], argv);
		int e = errno;
		if (write(pfd[1], &e, sizeof(e)) < 0)
			_exit(126);
		_exit(127);
	}
	close(pfd[1]);
	int e = 0;
	ssize_t n = read(pfd[0], &e, sizeof(e));
	close(pfd[0]);
	waitpid(pid, NULL, 0);
	if (n == (ssize_t)sizeof(e))
		return failed(e, "execve");
	return allow("");
}

/* ---- sockets -------------------------------------------------------------------- */

struct named { const char *name; int value; };

static const struct named families[] = {
	{"unix", AF_UNIX}, {"local", AF_UNIX}, {"inet", AF_INET}, {"inet6", AF_INET6},
	{"ax25", AF_AX25}, {"ipx", AF_IPX}, {"appletalk", AF_APPLETALK}, {"netrom", AF_NETROM},
	{"bridge", AF_BRIDGE}, {"atmpvc", AF_ATMPVC}, {"x25", AF_X25}, {"rose", AF_ROSE},
	{"netbeui", AF_NETBEUI}, {"security", AF_SECURITY}, {"key", AF_KEY},
	{"netlink", AF_NETLINK}, {"packet", AF_PACKET}, {"ash", AF_ASH}, {"econet", AF_ECONET},
	{"atmsvc", AF_ATMSVC}, {"rds", AF_RDS}, {"sna", AF_SNA}, {"irda", AF_IRDA},
	{"pppox", AF_PPPOX}, {"wanpipe", AF_WANPIPE}, {"llc", AF_LLC}, {"ib", AF_IB},
	{"mpls", AF_MPLS}, {"can", AF_CAN}, {"tipc", AF_TIPC}, {"bluetooth", AF_BLUETOOTH},
	{"iucv", AF_IUCV}, {"rxrpc", AF_RXRPC}, {"isdn", AF_ISDN}, {"phonet", AF_PHONET},
	{"ieee802154", AF_IEEE802154}, {"caif", AF_CAIF}, {"alg", AF_ALG}, {"nfc", AF_NFC},
	{"vsock", AF_VSOCK}, {"kcm", AF_KCM}, {"qipcrtr", AF_QIPCRTR}, {"smc", AF_SMC},
	{"xdp", AF_XDP}, {"mctp", 45}, {NULL, 0}};

static const struct named types[] = {
	{"stream", SOCK_STREAM}, {"dgram", SOCK_DGRAM}, {"raw", SOCK_RAW}, {"rdm", SOCK_RDM},
	{"seqpacket", SOCK_SEQPACKET}, {"dccp", SOCK_DCCP}, {"packet", SOCK_PACKET}, {NULL, 0}};

static const struct named protocols[] = {
	{"ip", IPPROTO_IP}, {"icmp", IPPROTO_ICMP}, {"tcp", IPPROTO_TCP}, {"udp", IPPROTO_UDP},
	{"icmpv6", IPPROTO_ICMPV6}, {"sctp", IPPROTO_SCTP}, {"raw", IPPROTO_RAW}, {NULL, 0}};

static int lookup(const struct named *t, const char *name, int *out)
{
	for (; t->name; t++)
		if (strcmp(t->name, name) == 0) {
			*out = t->value;
			return 0;
		}
	if (isdigit((unsigned char)name[0])) {
		*out = (int)strtol(name, NULL, 0);
		return 0;
	}
	return -1;
}

static int op_socket(int argc, char **argv)
{
	int fam, type, proto = 0;
	static const int after[] = {EAFNOSUPPORT, EPROTONOSUPPORT, ESOCKTNOSUPPORT, EPROTOTYPE};
	if (argc < 2)
		return report(2, EINVAL, "usage: socket FAMILY TYPE [PROTO]");
	if (lookup(families, argv[0], &fam) != 0)
		return report(2, EINVAL, "unknown family %s", argv[0]);
	if (lookup(types, argv[1], &type) != 0)
		return report(2, EINVAL, "unknown type %s", argv[1]);
	if (argc > 2 && lookup(protocols, argv[2], &proto) != 0)
		return report(2, EINVAL, "unknown protocol %s", argv[2]);
	int fd = socket(fam, type | SOCK_CLOEXEC, proto);
	if (fd < 0)
		return failed_after_lsm(errno, "socket", after, sizeof(after) / sizeof(after[0]));
	close(fd);
	return allow("");
}

static socklen_t unix_addr(const char *name, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	size_t len = strlen(name);
	if (len >= sizeof(sa->sun_path))
		len = sizeof(sa->sun_path) - 1;
	memcpy(sa->sun_path, name, len);
	if (name[0] == '@')
		sa->sun_path[0] = 0; /* abstract namespace */
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (name[0] == '@' ? 0 : 1));
}

static int op_connect_unix(int argc, char **argv)
{
	struct sockaddr_un sa;
	if (argc < 1)
		return report(2, EINVAL, "usage: connect-unix PATH|@NAME");
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return failed(errno, "socket");
	socklen_t len = unix_addr(argv[0], &sa);
	if (connect(fd, (struct sockaddr *)&sa, len) != 0) {
		int e = errno;
		close(fd);
		return failed(e, "connect");
	}
	close(fd);
	return allow("");
}

/* serve-unix ADDR: listen on a UNIX socket in the background (for connect-unix probes). */
static int op_serve_unix(int argc, char **argv)
{
	struct sockaddr_un sa;
	if (argc < 1)
		return report(2, EINVAL, "usage: serve-unix PATH|@NAME");
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0)
		return failed(errno, "socket");
	if (argv[0][0] != '@')
		unlink(argv[0]);
	socklen_t len = unix_addr(argv[0], &sa);
	if (bind(fd, (struct sockaddr *)&sa, len) != 0 || listen(fd, 64) != 0)
		return failed(errno, "bind/listen");
	fflush(stdout);
	if (fork() == 0) {
		setsid();
		for (;;) {
			int c = accept(fd, NULL, NULL);
			if (c >= 0)
				close(c);
		}
	}
	return allow("listening");
}

/* ---- mounts --------------------------------------------------------------------- */

static int op_mount(int argc, char **argv)
{
	static const int after[] = {ENODEV};
	if (argc < 3)
		return report(2, EINVAL, "usage: mount FSTYPE SOURCE TARGET [OPTS]");
	mkdir_p(argv[2]);
	if (mount(argv[1], argv[2], argv[0], 0, argc > 3 ? argv[3] : NULL) != 0)
		return failed_after_lsm(errno, "mount", after, 1);
	umount2(argv[2], MNT_DETACH);
	return allow("");
}

static int op_bindlike(const char *op, int argc, char **argv)
{
	unsigned long flags;
	if (strcmp(op, "remount") == 0) {
		if (argc < 1)
			return report(2, EINVAL, "usage: remount TARGET");
		if (mount(NULL, argv[0], NULL, MS_REMOUNT, NULL) != 0)
			return failed(errno, "mount MS_REMOUNT");
		return allow("");
	}
	if (argc < 2)
		return report(2, EINVAL, "usage: %s SOURCE TARGET", op);
	flags = strcmp(op, "bind") == 0 ? MS_BIND : strcmp(op, "rbind") == 0 ? MS_BIND | MS_REC
									  : MS_MOVE;
	mkdir_p(argv[1]);
	if (mount(argv[0], argv[1], NULL, flags, NULL) != 0)
		return failed(errno, op);
	if (flags == MS_MOVE)
		mount(argv[1], argv[0], NULL, MS_MOVE, NULL); /* put it back */
	else
		umount2(argv[1], MNT_DETACH);
	return allow("");
}

static int op_umount(int argc, char **argv)
{
	if (argc < 1)
		return report(2, EINVAL, "usage: umount TARGET");
	if (umount2(argv[0], 0) != 0)
		return failed(errno, "umount2");
	return allow("");
}

static int op_ptrace_read(int argc, char **argv)
{
	char path[64], buf[256];
	if (argc < 1)
		return report(2, EINVAL, "usage: ptrace-read PID");
	snprintf(path, sizeof(path), "/proc/%s/root", argv[0]);
	if (readlink(path, buf, sizeof(buf)) < 0)
		return failed(errno, "readlink /proc/PID/root");
	return allow("");
}

/* ---- capabilities --------------------------------------------------------------- */
/* Each returns 0 when the capability-gated step succeeded, -1 with errno otherwise.
 * Which step is gated, and why it is gated by that capability alone, is written next
 * to each function and in tests/kernel/README.md. */

/* chown(2) a root-owned file to another uid: CAP_CHOWN. */
static int cap_chown(void)
{
	const char *p = tmpfile_path("chown");
	if (make_file(p, 0644) != 0)
		return -1;
	int r = chown(p, OTHER_ID, -1), e = errno;
	unlink(p);
	errno = e;
	return r;
}

/* open(O_WRONLY) a mode-000 file: only CAP_DAC_OVERRIDE bypasses a write check
 * (CAP_DAC_READ_SEARCH covers reads only). */
static int cap_dac_override(void)
{
	const char *p = tmpfile_path("dac");
	if (make_file(p, 0) != 0)
		return -1;
	int fd = open(p, O_WRONLY | O_CLOEXEC), e = errno;
	if (fd >= 0)
		close(fd);
	unlink(p);
	errno = e;
	return fd < 0 ? -1 : 0;
}

/* open_by_handle_at(2) checks capable(CAP_DAC_READ_SEARCH) and nothing else (reading a
 * mode-000 file would fall back to CAP_DAC_OVERRIDE). */
static int cap_dac_read_search(void)
{
	const char *p = tmpfile_path("dacrs");
	struct {
		struct file_handle fh;
		unsigned char data[MAX_HANDLE_SZ];
	} h;
	int mnt_id;
	if (make_file(p, 0644) != 0)
		return -1;
	h.fh.handle_bytes = MAX_HANDLE_SZ;
	if (name_to_handle_at(AT_FDCWD, p, &h.fh, &mnt_id, 0) != 0) {
		unlink(p);
		errno = ENOTSUP; /* not EPERM: must not look like a denial */
		return -1;
	}
	int mfd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int fd = open_by_handle_at(mfd, &h.fh, O_RDONLY | O_CLOEXEC), e = errno;
	if (fd >= 0)
		close(fd);
	close(mfd);
	unlink(p);
	errno = e;
	return fd < 0 ? -1 : 0;
}

/* chmod(2) (to the same mode) a file owned by another uid: CAP_FOWNER. */
static int cap_fowner(void) { return chmod("/fixtures/uid1000", 0644); }

/* chmod g+s on a file whose group the caller is not in: without CAP_FSETID the kernel
 * silently clears S_ISGID, so the probe reads the mode back. */
static int cap_fsetid(void)
{
	struct stat st;
	const char *p = "/fixtures/gid1000";
	if (chmod(p, 02755) != 0)
		return -1;
	if (stat(p, &st) != 0)
		return -1;
	chmod(p, 0755);
	if (!(st.st_mode & S_ISGID)) {
		errno = EPERM; /* S_ISGID was silently dropped */
		return -1;
	}
	return 0;
}

/* kill(pid, 0) on a process of another uid: CAP_KILL. */
static int cap_kill(void)
{
	pid_t pid = other_uid_pid();
	if (pid <= 0) {
		errno = ESRCH;
		return -1;
	}
	return kill(pid, 0);
}

/* setgid/setuid to another id: CAP_SETGID / CAP_SETUID. */
static int cap_setgid(void) { return setgid(OTHER_ID); }
static int cap_setuid(void) { return setuid(OTHER_ID); }

/* Dropping a capability from the bounding set: CAP_SETPCAP. */
static int cap_setpcap(void) { return prctl(PR_CAPBSET_DROP, CAP_WAKE_ALARM, 0, 0, 0); }

/* Setting FS_IMMUTABLE_FL (tmpfs supports it since 5.19): CAP_LINUX_IMMUTABLE. */
static int cap_linux_immutable(void)
{
	const char *p = tmpfile_path("immutable");
	int flags = 0, r, e;
	if (make_file(p, 0644) != 0)
		return -1;
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0) {
		e = errno;
		unlink(p);
		errno = is_denial(e) ? ENOTSUP : e;
		return -1;
	}
	flags |= FS_IMMUTABLE_FL;
	r = ioctl(fd, FS_IOC_SETFLAGS, &flags);
	e = errno;
	if (r == 0) {
		flags &= ~FS_IMMUTABLE_FL;
		ioctl(fd, FS_IOC_SETFLAGS, &flags);
	}
	close(fd);
	unlink(p);
	errno = e;
	return r;
}

/* bind(2) to TCP port 80 (< ip_unprivileged_port_start): CAP_NET_BIND_SERVICE. */
static int cap_net_bind_service(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(80)};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		errno = is_denial(errno) ? EPROTO : errno; /* socket refused: not this cap */
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa)), e = errno;
	close(fd);
	errno = e;
	return r;
}

/* setsockopt(SO_RCVBUFFORCE): CAP_NET_ADMIN. */
static int cap_net_admin(void)
{
	int size = 65536;
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		errno = is_denial(errno) ? EPROTO : errno;
		return -1;
	}
	int r = setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)), e = errno;
	close(fd);
	errno = e;
	return r;
}

/* socket(AF_INET, SOCK_RAW): CAP_NET_RAW. */
static int cap_net_raw(void)
{
	int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* mlock(2) with RLIMIT_MEMLOCK = 0: CAP_IPC_LOCK. */
static int cap_ipc_lock(void)
{
	struct rlimit rl = {0, 0};
	static char page[4096] __attribute__((aligned(4096)));
	if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
		errno = EPROTO;
		return -1;
	}
	int r = mlock(page, sizeof(page)), e = errno;
	if (r == 0)
		munlock(page, sizeof(page));
	errno = e;
	return r;
}

/* shmat(2) of a segment with mode 000: only CAP_IPC_OWNER bypasses IPC permissions. */
static int cap_ipc_owner(void)
{
	int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0000);
	if (id < 0) {
		errno = is_denial(errno) ? EPROTO : errno;
		return -1;
	}
	void *p = shmat(id, NULL, SHM_RDONLY);
	int e = errno;
	if (p != (void *)-1)
		shmdt(p);
	shmctl(id, IPC_RMID, NULL);
	errno = e;
	return p == (void *)-1 ? -1 : 0;
}

/* init_module(2) checks CAP_SYS_MODULE first; an invalid image then fails ENOEXEC,
 * which proves the capability check passed. */
static int cap_sys_module(void)
{
	static const char junk[16];
	if (syscall(SYS_init_module, junk, sizeof(junk), "") == 0 || errno == ENOEXEC)
		return 0;
	return -1;
}

/* ioperm(2): CAP_SYS_RAWIO. */
static int cap_sys_rawio(void)
{
	if (ioperm(0x80, 1, 1) != 0)
		return -1;
	ioperm(0x80, 1, 0);
	return 0;
}

static int cap_sys_chroot(void) { return chroot("/"); }

/* Reading /proc/PID/environ of a process of another uid: CAP_SYS_PTRACE. */
static int cap_sys_ptrace(void)
{
	char path[64], buf[64];
	pid_t pid = other_uid_pid();
	if (pid <= 0) {
		errno = ESRCH;
		return -1;
	}
	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf)), e = errno;
	close(fd);
	errno = (int)e;
	return n < 0 ? -1 : 0;
}

/* acct(NULL) (turn process accounting off): CAP_SYS_PACCT. */
static int cap_sys_pacct(void) { return acct(NULL); }

/* sethostname(2): CAP_SYS_ADMIN. */
static int cap_sys_admin(void) { return sethostname("varmor-guest", 12); }

/* reboot(RB_DISABLE_CAD), harmless: CAP_SYS_BOOT. */
static int cap_sys_boot(void) { return reboot(RB_DISABLE_CAD); }

/* Lowering the nice value: CAP_SYS_NICE (fails with EACCES). */
static int cap_sys_nice(void) { return setpriority(PRIO_PROCESS, 0, -1); }

/* Raising a hard rlimit back after lowering it: CAP_SYS_RESOURCE. */
static int cap_sys_resource(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_max < 2) {
		errno = EPROTO;
		return -1;
	}
	rlim_t max = rl.rlim_max;
	rl.rlim_max = max - 1;
	if (rl.rlim_cur > rl.rlim_max)
		rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
		errno = EPROTO;
		return -1;
	}
	rl.rlim_max = max;
	return setrlimit(RLIMIT_NOFILE, &rl);
}

/* clock_settime(CLOCK_REALTIME, now): CAP_SYS_TIME. */
static int cap_sys_time(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return clock_settime(CLOCK_REALTIME, &ts);
}

/* vhangup(2) in a new session without a controlling tty (so nothing is hung up):
 * CAP_SYS_TTY_CONFIG. */
static int vhangup_child(void)
{
	setsid();
	return vhangup();
}
static int cap_sys_tty_config(void) { return in_child(vhangup_child); }

/* mknod(2) of a character device: CAP_MKNOD. */
static int cap_mknod(void)
{
	const char *p = tmpfile_path("mknod");
	unlink(p);
	int r = mknod(p, S_IFCHR | 0600, makedev(1, 3)), e = errno;
	unlink(p);
	errno = e;
	return r;
}

/* F_SETLEASE on a file owned by another uid: CAP_LEASE (fails with EACCES). */
static int cap_lease(void)
{
	int fd = open("/fixtures/uid1000", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		errno = is_denial(errno) ? EPROTO : errno;
		return -1;
	}
	int r = fcntl(fd, F_SETLEASE, F_RDLCK), e = errno;
	if (r == 0)
		fcntl(fd, F_SETLEASE, F_UNLCK);
	close(fd);
	errno = e;
	return r;
}

/* Send one audit netlink request and return the kernel's ack error (0 = accepted). */
static int audit_request(int type, const char *text)
{
	struct {
		struct nlmsghdr h;
		char body[256];
	} req;
	char buf[8192];
	struct sockaddr_nl kern = {.nl_family = AF_NETLINK};
	struct timeval tv = {2, 0};
	size_t blen = text ? strlen(text) + 1 : sizeof(struct audit_status);
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT);
	if (fd < 0) {
		errno = is_denial(errno) ? EPROTO : errno;
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = (unsigned)NLMSG_LENGTH(blen);
	req.h.nlmsg_type = (unsigned short)type;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	req.h.nlmsg_seq = 1;
	if (text)
		memcpy(req.body, text, blen);
	if (sendto(fd, &req, req.h.nlmsg_len, 0, (struct sockaddr *)&kern, sizeof(kern)) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n < 0) {
			int e = errno;
			close(fd);
			errno = e == EAGAIN ? ETIMEDOUT : e;
			return -1;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n);
		     h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr *err = NLMSG_DATA(h);
				close(fd);
				if (err->error == 0)
					return 0;
				errno = -err->error;
				return -1;
			}
		}
	}
}

/* AUDIT_USER message: CAP_AUDIT_WRITE. */
static int cap_audit_write(void) { return audit_request(AUDIT_USER, "varmor vprobe audit_write"); }

/* AUDIT_GET (read the audit status): CAP_AUDIT_CONTROL. */
static int cap_audit_control(void) { return audit_request(AUDIT_GET, NULL); }

/* bind(2) to the audit multicast log group: CAP_AUDIT_READ (netlink's own check for
 * multicast binds wants CAP_NET_ADMIN, which the probe profile does not deny). */
static int cap_audit_read(void)
{
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = 1 /* AUDIT_NLGRP_READLOG */};
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT);
	if (fd < 0) {
		errno = is_denial(errno) ? EPROTO : errno;
		return -1;
	}
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa)), e = errno;
	close(fd);
	errno = e;
	return r;
}

/* setxattr security.capability: CAP_SETFCAP. */
static int cap_setfcap(void)
{
	struct vfs_cap_data cap = {.magic_etc = VFS_CAP_REVISION_2};
	const char *p = tmpfile_path("setfcap");
	if (make_file(p, 0755) != 0)
		return -1;
	cap.data[0].permitted = 1u << CAP_NET_BIND_SERVICE;
	int r = setxattr(p, "security.capability", &cap, XATTR_CAPS_SZ_2, 0), e = errno;
	unlink(p);
	errno = e;
	return r;
}

/* Writing to apparmorfs .load: AppArmor asks for CAP_MAC_ADMIN before parsing; junk
 * data then fails with a non-permission error. */
static int cap_mac_admin(void)
{
	int fd = open("/sys/kernel/security/apparmor/.load", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, "junk", 4);
	int e = errno;
	close(fd);
	errno = e;
	if (n < 0 && !is_denial(e))
		return 0; /* rejected as data, after the capability check */
	return n < 0 ? -1 : 0;
}

/* klogctl(SYSLOG_ACTION_SIZE_UNREAD), always a restricted action: CAP_SYSLOG, which
 * falls back to CAP_SYS_ADMIN, so that one is dropped from the effective set first. */
static int cap_syslog(void)
{
	if (drop_sys_admin() != 0) {
		errno = EPROTO;
		return -1;
	}
	return klogctl(9, NULL, 0) < 0 ? -1 : 0;
}

/* timerfd_create(CLOCK_BOOTTIME_ALARM): CAP_WAKE_ALARM. */
static int cap_wake_alarm(void)
{
	int fd = timerfd_create(CLOCK_BOOTTIME_ALARM, TFD_CLOEXEC);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* EPOLLWAKEUP without CAP_BLOCK_SUSPEND is silently dropped from the event mask, so
 * the probe reads the mask back from /proc/self/fdinfo. */
static int cap_block_suspend(void)
{
	int pfd[2];
	char path[64], line[256];
	struct epoll_event ev = {.events = EPOLLIN | EPOLLWAKEUP};
	unsigned int events = 0;
	int found = 0;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0 || pipe2(pfd, O_CLOEXEC) != 0)
		return -1;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, pfd[0], &ev) != 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ep);
	FILE *f = fopen(path, "r");
	if (!f) {
		errno = EPROTO;
		return -1;
	}
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "tfd: %*d events: %x", &events) == 1)
			found = 1;
	fclose(f);
	if (!found) {
		errno = EPROTO;
		return -1;
	}
	if (!(events & EPOLLWAKEUP)) {
		errno = EPERM; /* EPOLLWAKEUP was silently dropped */
		return -1;
	}
	return 0;
}

/* perf_event_open of a kernel-inclusive software counter with perf_event_paranoid=2
 * (set by /init): CAP_PERFMON, with CAP_SYS_ADMIN dropped (it is the fallback). */
static int cap_perfmon(void)
{
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = PERF_TYPE_SOFTWARE;
	attr.config = PERF_COUNT_SW_CPU_CLOCK;
	attr.disabled = 1;
	if (drop_sys_admin() != 0) {
		errno = EPROTO;
		return -1;
	}
	int fd = (int)syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* BPF_MAP_CREATE with unprivileged_bpf_disabled (Debian's default): CAP_BPF, with
 * CAP_SYS_ADMIN dropped (it is the fallback). */
static int cap_bpf(void)
{
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.map_type = BPF_MAP_TYPE_ARRAY;
	attr.key_size = 4;
	attr.value_size = 4;
	attr.max_entries = 1;
	if (drop_sys_admin() != 0) {
		errno = EPROTO;
		return -1;
	}
	int fd = (int)syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof(attr));
	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* clone3(2) with set_tid (choosing the child's pid, as CRIU does):
 * checkpoint_restore_ns_capable(), i.e. CAP_CHECKPOINT_RESTORE with CAP_SYS_ADMIN
 * dropped (it is the fallback). Not a /proc/sys write, which the RuntimeDefault base
 * would deny before any capability check. */
static int cap_checkpoint_restore(void)
{
	struct clone_args args;
	pid_t tid = 30000 + (getpid() % 2000);
	long r = -1;
	if (drop_sys_admin() != 0) {
		errno = EPROTO;
		return -1;
	}
	for (int i = 0; i < 50; i++, tid++) {
		memset(&args, 0, sizeof(args));
		args.exit_signal = SIGCHLD;
		args.set_tid = (uint64_t)(uintptr_t)&tid;
		args.set_tid_size = 1;
		fflush(stdout);
		r = syscall(SYS_clone3, &args, sizeof(args));
		if (r == 0)
			syscall(SYS_exit_group, 0);
		if (r > 0 || errno != EEXIST)
			break;
	}
	if (r < 0)
		return -1;
	waitpid((pid_t)r, NULL, 0);
	return 0;
}

/* No code path of a mainline kernel checks these (CAP_NET_BROADCAST is unused and
 * CAP_MAC_OVERRIDE is only checked by Smack): nothing can prove a denial. */
static int cap_unprovable(void)
{
	errno = ENOSYS;
	return -1;
}

struct capop {
	const char *name;
	int (*fn)(void);
	const char *how;
};

static const struct capop capops[] = {
	{"chown", cap_chown, "chown to another uid"},
	{"dac_override", cap_dac_override, "open O_WRONLY a mode-000 file"},
	{"dac_read_search", cap_dac_read_search, "open_by_handle_at"},
	{"fowner", cap_fowner, "chmod a file owned by another uid"},
	{"fsetid", cap_fsetid, "chmod g+s, group not ours (bit kept?)"},
	{"kill", cap_kill, "kill(pid of uid 1000, 0)"},
	{"setgid", cap_setgid, "setgid(1000)"},
	{"setuid", cap_setuid, "setuid(1000)"},
	{"setpcap", cap_setpcap, "PR_CAPBSET_DROP"},
	{"linux_immutable", cap_linux_immutable, "FS_IOC_SETFLAGS immutable"},
	{"net_bind_service", cap_net_bind_service, "bind tcp port 80"},
	{"net_broadcast", cap_unprovable, "never checked by the kernel"},
	{"net_admin", cap_net_admin, "SO_RCVBUFFORCE"},
	{"net_raw", cap_net_raw, "socket(AF_INET, SOCK_RAW)"},
	{"ipc_lock", cap_ipc_lock, "mlock with RLIMIT_MEMLOCK=0"},
	{"ipc_owner", cap_ipc_owner, "shmat a mode-000 segment"},
	{"sys_module", cap_sys_module, "init_module"},
	{"sys_rawio", cap_sys_rawio, "ioperm"},
	{"sys_chroot", cap_sys_chroot, "chroot /"},
	{"sys_ptrace", cap_sys_ptrace, "read /proc/PID/environ of uid 1000"},
	{"sys_pacct", cap_sys_pacct, "acct(NULL)"},
	{"sys_admin", cap_sys_admin, "sethostname"},
	{"sys_boot", cap_sys_boot, "reboot(RB_DISABLE_CAD)"},
	{"sys_nice", cap_sys_nice, "setpriority -1"},
	{"sys_resource", cap_sys_resource, "raise RLIMIT_NOFILE hard limit"},
	{"sys_time", cap_sys_time, "clock_settime"},
	{"sys_tty_config", cap_sys_tty_config, "vhangup"},
	{"mknod", cap_mknod, "mknod c 1 3"},
	{"lease", cap_lease, "F_SETLEASE on a file of uid 1000"},
	{"audit_write", cap_audit_write, "AUDIT_USER netlink message"},
	{"audit_control", cap_audit_control, "AUDIT_GET netlink request"},
	{"setfcap", cap_setfcap, "setxattr security.capability"},
	{"mac_override", cap_unprovable, "never checked without Smack"},
	{"mac_admin", cap_mac_admin, "write apparmor .load"},
	{"syslog", cap_syslog, "klogctl SIZE_UNREAD, CAP_SYS_ADMIN dropped"},
	{"wake_alarm", cap_wake_alarm, "timerfd_create BOOTTIME_ALARM"},
	{"block_suspend", cap_block_suspend, "EPOLLWAKEUP kept?"},
	{"audit_read", cap_audit_read, "bind audit multicast group"},
	{"perfmon", cap_perfmon, "perf_event_open, CAP_SYS_ADMIN dropped"},
	{"bpf", cap_bpf, "BPF_MAP_CREATE, CAP_SYS_ADMIN dropped"},
	{"checkpoint_restore", cap_checkpoint_restore, "clone3 with set_tid, CAP_SYS_ADMIN dropped"},
	{NULL, NULL, NULL}};

static int op_cap(int argc, char **argv)
{
	if (argc < 1)
		return report(2, EINVAL, "usage: cap NAME");
	char name[64];
	snprintf(name, sizeof(name), "%s", argv[0]);
	for (char *c = name; *c; c++)
		*c = (char)(*c == '-' ? '_' : tolower((unsigned char)*c));
	if (strncmp(name, "cap_", 4) == 0)
		memmove(name, name + 4, strlen(name + 4) + 1);
	for (const struct capop *c = capops; c->name; c++) {
		if (strcmp(c->name, name) != 0)
			continue;
		fflush(stdout);
		if (c->fn() == 0)
			return report(0, 0, "cap %s: %s", c->name, c->how);
		return failed(errno, c->how);
	}
	return report(2, EINVAL, "unknown capability %s", argv[0]);
}

/* ---- harness helpers ------------------------------------------------------------ */

/* spawn-uid: start a long-running process of uid/gid 1000 (the peer of the kill and
 * sys_ptrace probes) and record its pid. Run unconfined by /init. */
static int op_spawn_uid(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	pid_t pid = fork();
	if (pid < 0)
		return report(2, errno, "fork");
	if (pid == 0) {
		setsid();
		if (setresgid(OTHER_ID, OTHER_ID, OTHER_ID) != 0 ||
		    setresuid(OTHER_ID, OTHER_ID, OTHER_ID) != 0)
			_exit(1);
		execl("/bin/busybox", "sleep", "1000000", (char *)NULL);
		_exit(1);
	}
	FILE *f = fopen(UID_PIDFILE, "w");
	if (!f)
		return report(2, errno, "pidfile");
	fprintf(f, "%d\n", (int)pid);
	fclose(f);
	return allow("spawned");
}

/* drain DEVICE: wait until everything written to a tty has been transmitted, so
 * results on the serial port are not lost at poweroff. */
static int op_drain(int argc, char **argv)
{
	if (argc < 1)
		return 2;
	int fd = open(argv[0], O_WRONLY | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return 2;
	tcdrain(fd);
	close(fd);
	return 0;
}

/* change-profile NAME: move this process to NAME now ("changeprofile NAME" to
 * /proc/self/attr/current, what aa_change_profile(3) does). change-onexec NAME: at the
 * next exec ("exec NAME" to /proc/self/attr/exec), then exec ourselves (`current`), so
 * the label shows where the exec landed. A refused change is DENY, and the LABEL line
 * (read after the attempt) must still be the profile the process started in. */
static int op_change_profile(int argc, char **argv, int onexec)
{
	char cmd[512];
	if (argc < 1)
		return report(2, EINVAL, "usage: change-profile|change-onexec NAME");
	int len = snprintf(cmd, sizeof(cmd), "%s %s", onexec ? "exec" : "changeprofile", argv[0]);
	int fd = open(onexec ? "/proc/self/attr/exec" : "/proc/self/attr/current", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return failed(errno, "open attr");
	ssize_t n = write(fd, cmd, (size_t)len);
	int e = errno;
	close(fd);
	if (n != len)
		return failed(n < 0 ? e : EIO, cmd);
	if (!onexec)
		return allow(cmd);
	char self[512];
	ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (sl <= 0)
		return report(2, errno, "readlink /proc/self/exe");
	self[sl] = 0;
	char *nargv[] = {self, "--", "current", NULL};
	fflush(stdout);
	execv(self, nargv);
	return failed(errno, "exec after change_onexec");
}

static int op_current(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return allow("");
}

static int run_op(int argc, char **argv);

/* serve: read one operation per line on stdin and answer on stdout, in THIS process,
 * which never execs again. It is how the live-update tests hold a process under a
 * profile while the profile is replaced. Extra ops: `open PATH` keeps a read fd and
 * `readfd N` reads from a kept fd (is access through an fd opened under the old
 * profile revalidated?); without N, the last kept fd. `keepsock FAMILY TYPE` keeps a
 * socket and `sockopt` calls getsockopt(2) on it (are kept sockets re-checked?). */
static int op_serve(void)
{
	char line[1024];
	int last_fd = -1, last_sock = -1;
	serve_mode = 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), stdin)) {
		char *args[32];
		int n = 0;
		for (char *tok = strtok(line, " \t\r\n"); tok && n < 31; tok = strtok(NULL, " \t\r\n"))
			args[n++] = tok;
		args[n] = NULL;
		if (n == 0)
			continue;
		if (strcmp(args[0], "quit") == 0)
			break;
		if (strcmp(args[0], "open") == 0 && n > 1) {
			int fd = open(args[1], O_RDONLY);
			if (fd < 0) {
				failed(errno, "open");
			} else {
				last_fd = fd;
				report(0, 0, "fd=%d", fd);
			}
			continue;
		}
		if (strcmp(args[0], "keepsock") == 0 && n > 2) {
			int fam, type;
			if (lookup(families, args[1], &fam) || lookup(types, args[2], &type)) {
				report(2, EINVAL, "keepsock FAMILY TYPE");
				continue;
			}
			int fd = socket(fam, type, 0);
			if (fd < 0) {
				failed(errno, "socket");
			} else {
				last_sock = fd;
				report(0, 0, "fd=%d", fd);
			}
			continue;
		}
		if (strcmp(args[0], "sockopt") == 0) {
			int v;
			socklen_t len = sizeof(v);
			if (getsockopt(last_sock, SOL_SOCKET, SO_TYPE, &v, &len) < 0)
				failed(errno, "getsockopt kept socket");
			else
				allow("getsockopt kept socket");
			continue;
		}
		if (strcmp(args[0], "readfd") == 0) {
			char c;
			int fd = n > 1 ? atoi(args[1]) : last_fd;
			lseek(fd, 0, SEEK_SET);
			if (read(fd, &c, 1) < 0)
				failed(errno, "read kept fd");
			else
				allow("read kept fd");
			continue;
		}
		run_op(n, args);
	}
	return 0;
}

static int run_op(int argc, char **argv)
{
	const char *op = argv[0];
	argc--;
	argv++;
	if (strcmp(op, "read") == 0) return op_read(argc, argv);
	if (strcmp(op, "write") == 0) return op_write(argc, argv);
	if (strcmp(op, "create") == 0) return op_create(argc, argv);
	if (strcmp(op, "link") == 0) return op_link(argc, argv);
	if (strcmp(op, "chmod") == 0) return op_chmod(argc, argv);
	if (strcmp(op, "exec") == 0) return op_exec(argc, argv);
	if (strcmp(op, "socket") == 0) return op_socket(argc, argv);
	if (strcmp(op, "connect-unix") == 0) return op_connect_unix(argc, argv);
	if (strcmp(op, "serve-unix") == 0) return op_serve_unix(argc, argv);
	if (strcmp(op, "mount") == 0) return op_mount(argc, argv);
	if (strcmp(op, "bind") == 0 || strcmp(op, "rbind") == 0 || strcmp(op, "move") == 0 ||
	    strcmp(op, "remount") == 0)
		return op_bindlike(op, argc, argv);
	if (strcmp(op, "umount") == 0) return op_umount(argc, argv);
	if (strcmp(op, "ptrace-read") == 0) return op_ptrace_read(argc, argv);
	if (strcmp(op, "cap") == 0) return op_cap(argc, argv);
	if (strcmp(op, "current") == 0) return op_current(argc, argv);
	if (strcmp(op, "change-profile") == 0) return op_change_profile(argc, argv, 0);
	if (strcmp(op, "change-onexec") == 0) return op_change_profile(argc, argv, 1);
	if (strcmp(op, "spawn-uid") == 0) return op_spawn_uid(argc, argv);
	if (strcmp(op, "drain") == 0) return op_drain(argc, argv);
	if (strcmp(op, "serve") == 0 && !serve_mode) return op_serve();
	return report(2, EINVAL, "unknown operation %s", op);
}

int main(int argc, char **argv)
{
	const char *profile = NULL, *target = NULL;
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
			profile = argv[++i];
		else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
			target = argv[++i];
		else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else
			return report(2, EINVAL, "unknown option %s", argv[i]);
	}
	if (i >= argc) {
		fprintf(stderr, "usage: vprobe [-p PROFILE] [-t TARGET] OP ARGS...\n");
		return 2;
	}
	alarm(20); /* never hang the guest */
	if (profile) {
		/* Confine the NEXT exec, then re-exec ourselves without -p. */
		char cmd[512];
		int fd = open("/proc/self/attr/exec", O_WRONLY | O_CLOEXEC);
		int len = snprintf(cmd, sizeof(cmd), "exec %s", profile);
		if (fd < 0 || write(fd, cmd, (size_t)len) != len)
			return report(2, errno, "change_onexec %s", profile);
		close(fd);
		char *nargv[64];
		int n = 0;
		nargv[n++] = argv[0];
		if (target) {
			nargv[n++] = "-t";
			nargv[n++] = (char *)target;
		}
		nargv[n++] = "--";
		for (int j = i; j < argc && n < 63; j++)
			nargv[n++] = argv[j];
		nargv[n] = NULL;
		/* Exec our real path (not /proc/self/exe) so comm= in audit records is ours. */
		char self[512];
		ssize_t sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (sl > 0) {
			self[sl] = 0;
			execv(self, nargv);
		}
		execv("/proc/self/exe", nargv);
		return report(2, errno, "re-exec under %s", profile);
	}
	if (target) {
		char *nargv[64];
		int n = 0;
		nargv[n++] = (char *)target;
		nargv[n++] = "--";
		for (int j = i; j < argc && n < 63; j++)
			nargv[n++] = argv[j];
		nargv[n] = NULL;
		fflush(stdout);
		execv(target, nargv);
		return failed(errno, "execve target");
	}
	return run_op(argc - i, argv + i);
}
