/* ve_probe: what a hostile root inside a VE tries, for vectl's escape tests.
 * Built static by the tests (cc -static) and copied into a VE; each mode prints
 * `key=value` lines that the test reads.
 *
 *   ve_probe race SECONDS      attach (PTRACE_SEIZE) to every new process in the
 *                              VE's PID namespace as soon as it appears
 *   ve_probe inspect PID       what this process may do to PID
 *   ve_probe syscalls          system calls the VE's seccomp filter refuses
 *                              (also run on the host, as the positive control)
 *   ve_probe kernel            kernel interfaces that reach past the VE: keys,
 *                              BPF, perf, userfaultfd, file handles, /proc/kcore,
 *                              /dev/mem (also run on the host, as the control)
 *   ve_probe signal PID        kill(PID, 0) and PTRACE_SEIZE of PID
 *   ve_probe sniff SECS NEEDLE every frame eth0 receives (promiscuous) for SECS
 *                              seconds: how many, and how many hold NEEDLE
 *   ve_probe project PATH      moving PATH out of its XFS project (the VE's disk
 *                              limit): its project id as the VE reads it, then
 *                              project id 0, and PROJINHERIT cleared (as an
 *                              fsxattr flag and with chattr -P's SETFLAGS)
 *   ve_probe sysinfo [N]       what sysinfo(2) tells (bytes), and its answer to a
 *                              null, a read-only and an unmapped buffer; with N,
 *                              also the mean time of N calls (ns_per_call)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/bpf.h>
#include <linux/fs.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int last_pid(void) {
    char buf[32] = {0};
    int fd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? atoi(buf) : -1;
}

static void exe_of(int pid, char *out, size_t len) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    ssize_t n = readlink(path, out, len - 1);
    if (n < 0) snprintf(out, len, "<%s>", strerror(errno));
    else out[n] = 0;
}

/* Spins on the next PIDs of the namespace; every successful attach is reported
 * with the attached process's executable, then the process is let go. */
static int race(int seconds) {
    time_t end = time(NULL) + seconds;
    long tries = 0, eperm = 0, attached = 0;
    while (time(NULL) < end) {
        int last = last_pid();
        for (int pid = last + 1; pid <= last + 3; pid++) {
            if (pid == getpid()) continue;
            tries++;
            if (ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) {
                /* Held stopped, it cannot exec or exit while we look. */
                ptrace(PTRACE_INTERRUPT, pid, 0, 0);
                int st;
                if (waitpid(pid, &st, __WALL) == pid && WIFSTOPPED(st)) {
                    char exe[512];
                    exe_of(pid, exe, sizeof exe);
                    printf("attached=%d %s\n", pid, exe);
                    ptrace(PTRACE_DETACH, pid, 0, 0);
                } else {
                    printf("exited=%d\n", pid);
                }
                fflush(stdout);
                attached++;
            } else if (errno == EPERM) {
                eperm++;
            }
        }
    }
    printf("tries=%ld\neperm=%ld\nattaches=%ld\n", tries, eperm, attached);
    return 0;
}

static void try_open(const char *what, int pid, const char *name, int flags) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    int fd = open(path, flags);
    if (fd >= 0) {
        printf("%s=ok\n", what);
        close(fd);
    } else {
        printf("%s=%s\n", what, strerrorname_np(errno));
    }
}

/* Opens every descriptor of PID through /proc/PID/fd/N (listing the numbers is
 * allowed to root; following the links is what matters). */
static void try_fds(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d) {
        printf("fd=%s\n", strerrorname_np(errno));
        return;
    }
    int err = ENOENT, opened = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char fdpath[320];
        snprintf(fdpath, sizeof fdpath, "%s/%s", path, e->d_name);
        int fd = open(fdpath, O_PATH);
        if (fd >= 0) {
            opened++;
            close(fd);
        } else {
            err = errno;
        }
    }
    closedir(d);
    printf("fd=%s\n", opened ? "ok" : strerrorname_np(err));
}

static int inspect(int pid) {
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) == 0) {
        printf("seize=ok\n");
        ptrace(PTRACE_INTERRUPT, pid, 0, 0);
        int st;
        waitpid(pid, &st, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    } else {
        printf("seize=%s\n", strerrorname_np(errno));
    }
    try_open("exe", pid, "exe", O_RDONLY);
    try_open("mem", pid, "mem", O_RDONLY);
    try_fds(pid);
    try_open("environ", pid, "environ", O_RDONLY);
    char exe[512];
    exe_of(pid, exe, sizeof exe);
    printf("exe_link=%s\n", exe);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "CapEff:", 7) || !strncmp(line, "CapPrm:", 7) ||
            !strncmp(line, "Seccomp:", 8) || !strncmp(line, "Name:", 5)) {
            char *c = strchr(line, ':');
            *c = '=';
            char *v = c + 1;
            while (*v == ' ' || *v == '\t') memmove(v, v + 1, strlen(v));
            fputs(line, stdout);
        }
    }
    if (f) fclose(f);
    return 0;
}

/* Each call runs in a child of its own, so that one (a new user namespace, a
 * changed I/O priority) does not change what the next one sees. */
static void in_child(const char *what, long (*call)(void)) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        long rc = call();
        printf("%s=%s\n", what, rc >= 0 ? "ok" : strerrorname_np(errno));
        fflush(stdout);
        _exit(0);
    }
    waitpid(pid, NULL, 0);
}

static long reaped(long pid) {
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    return pid;
}

static long do_unshare_user(void) { return syscall(SYS_unshare, CLONE_NEWUSER); }
static long do_unshare_uts(void) { return syscall(SYS_unshare, CLONE_NEWUTS); }
static long do_clone3(void) {
    struct { unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal,
             stack, stack_size, tls; } args = {0};
    args.exit_signal = SIGCHLD;
    return reaped(syscall(SYS_clone3, &args, sizeof args));
}
static long do_clone_newuser(void) {
    return reaped(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
}
static long do_clone_plain(void) { return reaped(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)); }
static long do_io_uring(void) {
    unsigned char params[120] = {0};
    long fd = syscall(SYS_io_uring_setup, 4, params);
    if (fd >= 0) close(fd);
    return fd;
}
/* ioprio_set(IOPRIO_WHO_PROCESS, self, class << 13 | level 4) */
static long do_ioprio_rt(void) { return syscall(SYS_ioprio_set, 1, 0, (1 << 13) | 4); }
static long do_ioprio_be(void) { return syscall(SYS_ioprio_set, 1, 0, (2 << 13) | 4); }

/* getpid through the x32 ABI (number | 0x40000000): ENOSYS where x32 is off. */
static long do_x32_getpid(void) { return syscall(0x40000000 | SYS_getpid); }

static int syscalls(void) {
    in_child("x32_getpid", do_x32_getpid);
    in_child("unshare_user", do_unshare_user);
    in_child("unshare_uts", do_unshare_uts);
    in_child("clone3", do_clone3);
    in_child("clone_newuser", do_clone_newuser);
    in_child("clone_plain", do_clone_plain);
    in_child("io_uring_setup", do_io_uring);
    in_child("ioprio_rt", do_ioprio_rt);
    in_child("ioprio_be", do_ioprio_be);
    return 0;
}

static long do_add_key(void) {
    /* KEY_SPEC_PROCESS_KEYRING: gone with this child. */
    return syscall(SYS_add_key, "user", "vectl-probe", "x", 1, -2);
}
static long do_bpf_map(void) {
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_ARRAY;
    a.key_size = 4;
    a.value_size = 4;
    a.max_entries = 1;
    return syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a);
}
static long do_perf(void) {
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_CPU_CLOCK;
    a.disabled = 1;
    return syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}
static long do_userfaultfd(void) { return syscall(SYS_userfaultfd, O_CLOEXEC); }
static long do_open_by_handle(void) {
    struct { struct file_handle h; unsigned char b[128]; } fh;
    int mount_id;
    fh.h.handle_bytes = sizeof fh.b;
    if (name_to_handle_at(AT_FDCWD, "/dev", &fh.h, &mount_id, 0) < 0) {
        /* A file system without handles (a VE's overlay): a made-up one, as the
         * "shocker" attack guesses them (inode 2, generation 0). */
        memset(&fh, 0, sizeof fh);
        fh.h.handle_bytes = 8;
        fh.h.handle_type = 1;
        fh.b[0] = 2; /* f_handle[0]: the bytes right after the header */
    }
    int dir = open("/dev", O_RDONLY | O_DIRECTORY); /* on the handle's mount (tmpfs) */
    if (dir < 0) return -1;
    return open_by_handle_at(dir, &fh.h, O_RDONLY);
}
/* Reads a byte: ok, or the errno (ENODATA: nothing to read, as from /dev/null). */
static long read_one(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    char c;
    long n = read(fd, &c, 1);
    if (n == 0) {
        errno = ENODATA;
        return -1;
    }
    return n;
}
static long do_kcore(void) { return read_one("/proc/kcore"); }
static long do_dev_mem(void) { return read_one("/dev/mem"); }
static long do_mknod_mem(void) {
    unlink("/tmp/vectl-probe-mem");
    long rc = mknod("/tmp/vectl-probe-mem", S_IFCHR | 0600, makedev(1, 1));
    if (rc == 0) {
        rc = read_one("/tmp/vectl-probe-mem");
        unlink("/tmp/vectl-probe-mem");
    }
    return rc;
}

static int kernel(void) {
    in_child("add_key", do_add_key);
    in_child("bpf_map_create", do_bpf_map);
    in_child("perf_event_open", do_perf);
    in_child("userfaultfd", do_userfaultfd);
    in_child("open_by_handle_at", do_open_by_handle);
    in_child("read_kcore", do_kcore);
    in_child("read_dev_mem", do_dev_mem);
    in_child("mknod_and_read_mem", do_mknod_mem);
    return 0;
}

static int target;
static long do_kill0(void) { return kill(target, 0); }
static long do_seize(void) { return ptrace(PTRACE_SEIZE, target, 0, 0); }
static int signal_mode(int pid) {
    target = pid;
    in_child("kill", do_kill0);
    in_child("ptrace_seize", do_seize);
    return 0;
}

static int sniff(int seconds, const char *needle) {
    int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (fd < 0) { printf("socket=%s\n", strerrorname_np(errno)); return 0; }
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = if_nametoindex("eth0");
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
        printf("promisc=%s\n", strerrorname_np(errno));
        return 0;
    }
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    time_t end = time(NULL) + seconds;
    long frames = 0, hits = 0;
    static char buf[65536];
    size_t nl = strlen(needle);
    while (time(NULL) < end) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) continue;
        frames++;
        if ((size_t)n >= nl && memmem(buf, n, needle, nl)) hits++;
    }
    printf("frames=%ld\nneedle=%ld\n", frames, hits);
    return 0;
}

static const char *project_path;
static long set_fsxattr(int clear_projid, int clear_inherit) {
    int fd = open(project_path, O_RDONLY | O_NOFOLLOW);
    if (fd < 0) return -1;
    struct fsxattr a;
    if (ioctl(fd, FS_IOC_FSGETXATTR, &a) < 0) return -1;
    if (clear_projid) a.fsx_projid = 0;
    if (clear_inherit) a.fsx_xflags &= ~FS_XFLAG_PROJINHERIT;
    return ioctl(fd, FS_IOC_FSSETXATTR, &a);
}
static long do_chproj(void) { return set_fsxattr(1, 0); }
static long do_noinherit(void) { return set_fsxattr(0, 1); }
/* chattr -P: the same flag through FS_IOC_SETFLAGS. */
static long do_noinherit_flags(void) {
    int fd = open(project_path, O_RDONLY | O_NOFOLLOW);
    if (fd < 0) return -1;
    int flags;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0) return -1;
    flags &= ~FS_PROJINHERIT_FL;
    return ioctl(fd, FS_IOC_SETFLAGS, &flags);
}
static int project_mode(const char *path) {
    project_path = path;
    int fd = open(path, O_RDONLY | O_NOFOLLOW);
    struct fsxattr a;
    if (fd >= 0 && ioctl(fd, FS_IOC_FSGETXATTR, &a) == 0)
        printf("projid=%u\n", a.fsx_projid);
    else
        printf("projid=%s\n", strerrorname_np(errno));
    in_child("chproj", do_chproj);
    in_child("noinherit", do_noinherit);
    in_child("noinherit_flags", do_noinherit_flags);
    return 0;
}

static const char *errname(long rc) {
    return rc == 0 ? "ok" : strerrorname_np(errno);
}
static int sysinfo_mode(int n) {
    struct sysinfo si;
    if (syscall(SYS_sysinfo, &si) != 0) {
        printf("error=%s\n", strerrorname_np(errno));
        return 0;
    }
    unsigned long long u = si.mem_unit;
    printf("totalram=%llu\nfreeram=%llu\ntotalswap=%llu\nfreeswap=%llu\n",
           si.totalram * u, si.freeram * u, si.totalswap * u, si.freeswap * u);
    printf("uptime=%ld\nprocs=%u\n", si.uptime, si.procs);
    /* Buffers no process may have written into. */
    printf("null=%s\n", errname(syscall(SYS_sysinfo, NULL)));
    void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("readonly=%s\n", errname(syscall(SYS_sysinfo, ro)));
    void *gone = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(gone, 4096);
    printf("unmapped=%s\n", errname(syscall(SYS_sysinfo, gone)));
    if (n > 0) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < n; i++) syscall(SYS_sysinfo, &si);
        clock_gettime(CLOCK_MONOTONIC, &b);
        long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
        printf("ns_per_call=%lld\n", ns / n);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "race")) return race(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "inspect")) return inspect(atoi(argv[2]));
    if (argc == 2 && !strcmp(argv[1], "syscalls")) return syscalls();
    if (argc == 2 && !strcmp(argv[1], "kernel")) return kernel();
    if (argc == 3 && !strcmp(argv[1], "signal")) return signal_mode(atoi(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "sniff")) return sniff(atoi(argv[2]), argv[3]);
    if (argc == 3 && !strcmp(argv[1], "project")) return project_mode(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "sysinfo")) return sysinfo_mode(0);
    if (argc == 3 && !strcmp(argv[1], "sysinfo")) return sysinfo_mode(atoi(argv[2]));
    fprintf(stderr, "usage: ve_probe race SECONDS | inspect PID | syscalls | kernel | signal PID | sniff SECS NEEDLE | project PATH | sysinfo [N]\n");
    return 2;
}
