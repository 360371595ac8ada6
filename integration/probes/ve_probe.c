/* ve_probe: what a hostile root inside a VE tries, for vectl's escape tests.
 * Built static by the tests (cc -static) and copied into a VE; each mode prints
 * `key=value` lines that the test reads.
 *
 *   ve_probe race SECONDS      attach (PTRACE_SEIZE) to every new process in the
 *                              VE's PID namespace as soon as it appears
 *   ve_probe inspect PID       what this process may do to PID
 *   ve_probe syscalls          system calls the VE's seccomp filter refuses
 *                              (also run on the host, as the positive control)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
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

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "race")) return race(atoi(argv[2]));
    if (argc == 3 && !strcmp(argv[1], "inspect")) return inspect(atoi(argv[2]));
    if (argc == 2 && !strcmp(argv[1], "syscalls")) return syscalls();
    fprintf(stderr, "usage: ve_probe race SECONDS | inspect PID | syscalls\n");
    return 2;
}
