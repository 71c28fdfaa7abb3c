/*
 * What one interception of a KVM ioctl costs the traced program, by mechanism, with the tracer in C:
 * the floor under `minivmm trace`'s Python tracer, and the measurement behind the choice of mechanism.
 *
 *   bench_stop_mechanisms N ROUNDS
 *
 * A child process calls ioctl(/dev/kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) N times and times the
 * whole loop with CLOCK_MONOTONIC, under each mechanism in turn (ROUNDS times, interleaved):
 *   bare     nothing intercepts the call;
 *   ptrace   a seccomp filter returns SECCOMP_RET_TRACE for KVM ioctls (type 0xAE) and the parent,
 *            attached with PTRACE_SEIZE, takes the stop: waitpid, PTRACE_GETREGS, PTRACE_CONT (one stop
 *            per call, as minivmm trace does with the kernel clock);
 *   notify   the filter returns SECCOMP_RET_USER_NOTIF (its listener fd passed to the parent over a
 *            socket): the parent receives the call (number and arguments, no register read) with
 *            SECCOMP_IOCTL_NOTIF_RECV and lets it run with SECCOMP_USER_NOTIF_FLAG_CONTINUE.
 * Prints one line per mechanism: the median over the rounds of the ns per call, and what the
 * mechanism added to bare.
 *
 * Build and run: gcc -O2 -o /tmp/bench_stop_mechanisms scripts/bench_stop_mechanisms.c &&
 *                /tmp/bench_stop_mechanisms 20000 5
 * Needs /dev/kvm; ptrace and seccomp user notification (Linux 5.5+) allowed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvm_seccomp_filter.h"

enum mechanism { BARE, PTRACE, NOTIFY, MECHANISMS };
static const char *const names[MECHANISMS] = { "bare", "ptrace", "notify" };

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

/* The traced program: N KVM_CHECK_EXTENSION calls, its ns per call written to `out`. */
static void program(int kvm, long n, int out)
{
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++)
        if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) < 0)
            die("KVM_CHECK_EXTENSION");
    double per_call = (double)(now_ns() - t0) / (double)n;
    if (write(out, &per_call, sizeof(per_call)) != sizeof(per_call))
        die("write");
}

static void send_fd(int sock, int fd)
{
    char control[CMSG_SPACE(sizeof(int))] = { 0 };
    char byte = 0;
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                          .msg_controllen = sizeof(control) };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    if (sendmsg(sock, &msg, 0) != 1)
        die("sendmsg");
}

static int receive_fd(int sock)
{
    char control[CMSG_SPACE(sizeof(int))] = { 0 };
    char byte;
    struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                          .msg_controllen = sizeof(control) };
    if (recvmsg(sock, &msg, 0) != 1)
        die("recvmsg");
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
    return fd;
}

/* One run of the program under `m`; returns its ns per call. */
static double run(enum mechanism m, int kvm, long n)
{
    int result[2], sock[2];
    if (pipe(result) || socketpair(AF_UNIX, SOCK_STREAM, 0, sock))
        die("pipe");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        close(result[0]);
        if (m == PTRACE) {
            if (install_kvm_filter(SECCOMP_RET_TRACE, 0) < 0)
                die("seccomp(SECCOMP_RET_TRACE)");
            raise(SIGSTOP); /* the parent seizes us meanwhile */
        } else if (m == NOTIFY) {
            int listener = install_kvm_filter(SECCOMP_RET_USER_NOTIF, SECCOMP_FILTER_FLAG_NEW_LISTENER);
            if (listener < 0)
                die("seccomp(SECCOMP_RET_USER_NOTIF)");
            send_fd(sock[1], listener);
            close(listener);
        }
        program(kvm, n, result[1]);
        _exit(0);
    }
    close(result[1]);
    if (m == PTRACE) {
        int status;
        if (waitpid(child, &status, WUNTRACED) != child)
            die("waitpid(SIGSTOP)");
        if (ptrace(PTRACE_SEIZE, child, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL))
            die("PTRACE_SEIZE");
        kill(child, SIGCONT);
        for (;;) {
            if (waitpid(child, &status, __WALL) != child)
                die("waitpid");
            if (WIFEXITED(status) || WIFSIGNALED(status))
                break;
            int sig = 0;
            if (status >> 8 == (SIGTRAP | (PTRACE_EVENT_SECCOMP << 8))) {
                struct user_regs_struct regs;
                if (ptrace(PTRACE_GETREGS, child, 0, &regs))
                    die("PTRACE_GETREGS");
            } else if (status >> 16 == 0 && WSTOPSIG(status) != SIGCONT && WSTOPSIG(status) != SIGSTOP) {
                sig = WSTOPSIG(status); /* a signal for the program: deliver it */
            }
            ptrace(PTRACE_CONT, child, 0, sig);
        }
    } else if (m == NOTIFY) {
        int listener = receive_fd(sock[0]);
        struct seccomp_notif_sizes sizes;
        if (syscall(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes))
            die("SECCOMP_GET_NOTIF_SIZES");
        struct seccomp_notif *req = calloc(1, sizes.seccomp_notif);
        struct seccomp_notif_resp *resp = calloc(1, sizes.seccomp_notif_resp);
        for (;;) {
            memset(req, 0, sizes.seccomp_notif);
            if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, req) < 0) {
                if (errno == EINTR)
                    continue;
                break; /* ENOENT or EBADF: the program has gone */
            }
            memset(resp, 0, sizes.seccomp_notif_resp);
            resp->id = req->id;
            resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
            if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, resp) < 0 && errno != ENOENT)
                die("SECCOMP_IOCTL_NOTIF_SEND");
        }
        close(listener);
        free(req);
        free(resp);
    }
    double per_call = 0;
    if (read(result[0], &per_call, sizeof(per_call)) != sizeof(per_call))
        die("read (the program failed)");
    waitpid(child, NULL, 0);
    close(result[0]);
    close(sock[0]);
    close(sock[1]);
    return per_call;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (n <= 0 || rounds <= 0 || rounds > 100) {
        fprintf(stderr, "usage: %s N ROUNDS (N > 0, 0 < ROUNDS <= 100)\n", argv[0]);
        return 2;
    }
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    double samples[MECHANISMS][100];
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < MECHANISMS; m++)
            samples[m][r] = run((enum mechanism)m, kvm, n);
    double median[MECHANISMS];
    for (int m = 0; m < MECHANISMS; m++) {
        qsort(samples[m], (size_t)rounds, sizeof(double), by_value);
        median[m] = samples[m][rounds / 2];
    }
    printf("KVM_CHECK_EXTENSION x %ld, median of %d interleaved rounds, tracer in C\n", n, rounds);
    for (int m = 0; m < MECHANISMS; m++)
        printf("%-8s %10.0f ns per call   %+8.2f us added\n", names[m], median[m], (median[m] - median[BARE]) / 1000);
    return 0;
}
