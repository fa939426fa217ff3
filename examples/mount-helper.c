/*
 * mount-helper: mount a shared device only while this host holds it, with libmmp.
 *
 *   mount-helper [-f] [-t FSTYPE] [-o OPTIONS] [-m MMP_DEVICE] DEVICE DIR
 *
 *   -f   take a device whose previous holder did not release it (after the full activity
 *        test: a live holder is never taken)
 *   -m   the device carrying the native MMP area, when DEVICE's file system has no MMP of
 *        its own (XFS, btrfs on a LUN, with a small partition or LUN for MMP); default DEVICE
 *
 * Native MMP area: acquires it (heartbeating from then on), mounts DEVICE on DIR with mount(8),
 * then stays in the foreground heartbeating until DIR is unmounted (polled every 200 ms) or
 * SIGTERM/SIGINT arrives (it then runs umount(8) on DIR and releases only if that worked).
 * Exit status, as the mmp command's: 0 released cleanly; 1 refused (another host holds the
 * device); 2 error (a corrupt MMP block and a missing hostid included); 3 ownership lost
 * while mounted (the file system must be considered fenced: stop using it).
 *
 * The acquire does not block in libmmp (mmp_device_acquire_start): progress, the end of the
 * acquire and later a loss all come through libmmp's event descriptor
 * (mmp_device_event_fd), which the main loop polls (with its 200 ms mount check once
 * mounted): no callback, no thread of its own.
 *
 * ext4/ldiskfs with MMP: the kernel heartbeats a mounted ext4 itself. The helper runs the
 * full acquire protocol (which the kernel skips on a clean block), hands the device to the
 * kernel (release, which writes CLEAN) and mounts at once, then exits with mount's status.
 *
 * Identity: hostid from $MMP_HOSTID or /etc/hostid, node name from uname (NULL identity).
 * Build: cc -std=c11 -Wall -Wextra mount-helper.c $(pkg-config --cflags --libs mmp)
 */
#define _XOPEN_SOURCE 700 /* realpath, sigaction, strtok_r */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mmp.h>

/* Set from the signal handler. */
static volatile sig_atomic_t g_stop = 0;
static struct mmp_device *volatile g_dev = NULL; /* for mmp_device_cancel in the handler */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
    if (g_dev != NULL) {
        /* Lock-free and async-signal-safe: stops an acquire that is still waiting. */
        (void)mmp_device_cancel(g_dev);
    }
}

static void on_progress(void *userdata, mmp_phase phase, uint64_t remaining_ms, uint64_t total_ms) {
    const char *dev = userdata;
    static mmp_phase last = MMP_PHASE_DONE;
    if (phase != last) {
        fprintf(stderr, "mount-helper: %s: %s for %.1f s\n", dev,
                phase == MMP_PHASE_WATCHING ? "watching for activity"
                : phase == MMP_PHASE_CLAIMING ? "claimed; verifying nobody else claims"
                                              : "waiting",
                (double)total_ms / 1000.0);
        last = phase;
    }
    (void)remaining_ms;
}

/* Acquires without blocking in libmmp: the acquire runs on libmmp's heartbeat thread, and
 * this thread waits in poll(2) on the handle's event descriptor, reporting progress
 * (MMP_EVENT_PROGRESS) until the end (MMP_EVENT_ACQUIRE_DONE). A SIGTERM/SIGINT cancels it
 * from the handler (mmp_device_cancel); poll then wakes with EINTR, and the end follows
 * within 50 ms. On success the device already heartbeats. A tool holding several devices
 * starts them all and polls all their descriptors the same way (docs/c-api.md). */
static mmp_result acquire_polling(struct mmp_device *dev, bool force, const char *path,
                                  int *out_fd) {
    /* libmmp's threads may start here and inherit this mask: with the signals blocked
     * while they start, SIGTERM and SIGINT always reach the main thread. */
    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigprocmask(SIG_BLOCK, &sigs, &old);
    mmp_result r = mmp_device_acquire_start(dev, force, NULL, NULL); /* no callback: the fd */
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (r != MMP_RESULT_OK) {
        return r;
    }
    struct pollfd pfd = {-1, POLLIN, 0};
    r = mmp_device_event_fd(dev, &pfd.fd);
    if (r != MMP_RESULT_OK) {
        (void)mmp_device_release(dev); /* gives the started acquire up */
        return r;
    }
    *out_fd = pfd.fd;
    on_progress((void *)path, MMP_PHASE_READING, 0, 0);
    for (;;) {
        uint32_t events = 0;
        if (mmp_device_read_events(dev, &events, NULL) == MMP_RESULT_OK) {
            struct mmp_progress p;
            if ((events & MMP_EVENT_PROGRESS) &&
                mmp_device_acquire_progress(dev, &p) == MMP_RESULT_OK) {
                on_progress((void *)path, p.phase, p.remaining_ms, p.total_ms);
            }
            if (events & MMP_EVENT_ACQUIRE_DONE) {
                r = mmp_device_acquire_finish(dev);
                if (r == MMP_RESULT_OK && (events & MMP_EVENT_LOST)) {
                    /* Held, and lost before we looked. */
                    (void)mmp_device_release(dev);
                    return MMP_RESULT_LOST;
                }
                return r;
            }
        }
        (void)poll(&pfd, 1, -1);
    }
}

/* Runs a program and waits for it; returns its exit status, or -1. */
static int run(char *const argv[]) {
    pid_t pid = fork();
    if (pid < 0) {
        perror("mount-helper: fork");
        return -1;
    }
    if (pid == 0) {
        execvp(argv[0], argv);
        perror("mount-helper: exec");
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("mount-helper: waitpid");
            return -1;
        }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Decodes the octal escapes of /proc/self/mountinfo (\040 for a space, and so on). */
static void unescape(char *s) {
    char *out = s;
    for (char *in = s; *in != '\0'; in++) {
        if (in[0] == '\\' && in[1] >= '0' && in[1] <= '7' && in[2] >= '0' && in[2] <= '7' &&
            in[3] >= '0' && in[3] <= '7') {
            *out++ = (char)(((in[1] - '0') << 6) | ((in[2] - '0') << 3) | (in[3] - '0'));
            in += 3;
        } else {
            *out++ = *in;
        }
    }
    *out = '\0';
}

/* Whether `dir` (a canonical path) is a mount point in this mount namespace. */
static bool is_mounted(const char *dir) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (f == NULL) {
        return true; /* cannot tell: keep holding */
    }
    char line[8192];
    bool found = false;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        /* Fields: id parent major:minor root mount-point ... */
        char *save = NULL;
        char *field = strtok_r(line, " ", &save);
        for (int i = 0; field != NULL && i < 4; i++) {
            field = strtok_r(NULL, " ", &save);
        }
        if (field != NULL) {
            unescape(field);
            found = strcmp(field, dir) == 0;
        }
    }
    fclose(f);
    return found;
}

/* The mmp command's exit codes: a corrupt block and a missing hostid are errors there,
 * not refusals by another host. */
static int exit_for(mmp_result r) {
    if (r == MMP_RESULT_OK) {
        return 0;
    }
    if (mmp_result_is_lost(r)) {
        return 3;
    }
    if (r == MMP_RESULT_CORRUPT || r == MMP_RESULT_NO_HOSTID || r == MMP_RESULT_ABORTED) {
        return 2;
    }
    return mmp_result_is_refusal(r) ? 1 : 2;
}

/* Says why a call on `dev` failed: with the owner behind a refusal, or the errno behind an
 * I/O error, from the same call (no second status read, which could see a later block). */
static void report(const char *path, const struct mmp_device *dev, mmp_result r) {
    struct mmp_error_info e;
    if (dev != NULL && mmp_device_last_error(dev, &e) == MMP_RESULT_OK && e.result == r) {
        if (e.owner_valid) {
            fprintf(stderr, "mount-helper: %s: %s (held by %s, hostid %08x, last write %.1f s ago)\n",
                    path, mmp_result_str(r), e.owner.nodename, (unsigned)e.owner.hostid,
                    (double)e.owner_age_ms / 1000.0);
            return;
        }
        if (e.os_error != 0) {
            fprintf(stderr, "mount-helper: %s: %s (%s)\n", path, mmp_result_str(r),
                    strerror(e.os_error));
            return;
        }
    }
    fprintf(stderr, "mount-helper: %s: %s\n", path, mmp_result_str(r));
}

static void usage(void) {
    fprintf(stderr, "usage: mount-helper [-f] [-t FSTYPE] [-o OPTIONS] [-m MMP_DEVICE] DEVICE DIR\n");
}

int main(int argc, char **argv) {
    bool force = false;
    const char *fstype = NULL, *options = NULL, *mmp_path = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "ft:o:m:h")) != -1) {
        switch (opt) {
        case 'f': force = true; break;
        case 't': fstype = optarg; break;
        case 'o': options = optarg; break;
        case 'm': mmp_path = optarg; break;
        default: usage(); return opt == 'h' ? 0 : 2;
        }
    }
    if (argc - optind != 2) {
        usage();
        return 2;
    }
    const char *device = argv[optind], *dir = argv[optind + 1];
    if (mmp_path == NULL) {
        mmp_path = device;
    }
    char canon[PATH_MAX];
    if (realpath(dir, canon) == NULL) {
        perror(dir);
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct mmp_device *dev = NULL;
    mmp_result r = mmp_device_open(mmp_path, NULL, 0, &dev);
    if (r != MMP_RESULT_OK) {
        if (r == MMP_RESULT_NOT_FOUND || r == MMP_RESULT_IO || r == MMP_RESULT_PERMISSION_DENIED) {
            fprintf(stderr, "mount-helper: %s: %s (%s)\n", mmp_path, mmp_result_str(r),
                    strerror(mmp_last_os_error()));
        } else {
            fprintf(stderr, "mount-helper: %s: %s\n", mmp_path, mmp_result_str(r));
        }
        return 2;
    }
    g_dev = dev;
    struct mmp_status st;
    r = mmp_device_status(dev, &st);
    if (r != MMP_RESULT_OK) {
        fprintf(stderr, "mount-helper: %s: %s\n", mmp_path, mmp_result_str(r));
        g_dev = NULL;
        mmp_device_free(dev);
        return exit_for(r);
    }

    struct pollfd pfd = {-1, POLLIN, 0};
    r = acquire_polling(dev, force, mmp_path, &pfd.fd);
    if (r != MMP_RESULT_OK) {
        report(mmp_path, dev, r);
        g_dev = NULL;
        mmp_device_free(dev);
        return exit_for(r);
    }

    char *mount_argv[9];
    int n = 0;
    mount_argv[n++] = "mount";
    if (fstype != NULL) {
        mount_argv[n++] = "-t";
        mount_argv[n++] = (char *)fstype;
    }
    if (options != NULL) {
        mount_argv[n++] = "-o";
        mount_argv[n++] = (char *)options;
    }
    mount_argv[n++] = (char *)device;
    mount_argv[n++] = (char *)dir;
    mount_argv[n] = NULL;

    if (st.format == MMP_FORMAT_EXT4) {
        /* Hand over to the kernel: CLEAN, then mount at once; kmmpd claims the block. */
        r = mmp_device_release(dev);
        g_dev = NULL;
        mmp_device_free(dev);
        if (r != MMP_RESULT_OK) {
            fprintf(stderr, "mount-helper: %s: handover failed: %s\n", mmp_path, mmp_result_str(r));
            return 2;
        }
        int rc = run(mount_argv);
        if (rc == 0) {
            printf("mounted %s on %s (ext4 MMP: the kernel heartbeats now)\n", device, dir);
        }
        return rc == 0 ? 0 : 2;
    }

    /* The acquire left the device heartbeating (mmp_device_acquire_start needs no
     * mmp_device_start_heartbeat); pfd is its event descriptor. */
    if (run(mount_argv) != 0) {
        fprintf(stderr, "mount-helper: mount failed; releasing %s\n", mmp_path);
        mmp_device_release(dev);
        g_dev = NULL;
        mmp_device_free(dev);
        return 2;
    }
    printf("mounted %s on %s (heartbeat on %s)\n", device, dir, mmp_path);
    fflush(stdout);

    int code = 0;
    for (;;) {
        uint32_t events = 0;
        struct mmp_loss_info loss;
        if (mmp_device_read_events(dev, &events, &loss) == MMP_RESULT_OK &&
            (events & MMP_EVENT_LOST)) {
            fprintf(stderr,
                    "mount-helper: %s: ownership LOST (reason %u): stop using %s at once\n",
                    mmp_path, (unsigned)loss.reason, dir);
            code = 3;
            break;
        }
        if (g_stop) {
            g_stop = 0;
            char *umount_argv[] = {"umount", (char *)dir, NULL};
            if (run(umount_argv) != 0) {
                fprintf(stderr, "mount-helper: umount %s failed; still holding %s\n", dir, mmp_path);
            }
        }
        if (!is_mounted(canon)) {
            break;
        }
        /* Wakes at once on a loss or a signal (EINTR), else after 200 ms for the mount
         * check. */
        (void)poll(&pfd, 1, 200);
    }
    r = mmp_device_release(dev);
    g_dev = NULL;
    mmp_device_free(dev);
    if (code == 0 && r != MMP_RESULT_OK) {
        fprintf(stderr, "mount-helper: %s: release: %s\n", mmp_path, mmp_result_str(r));
        code = exit_for(r);
    }
    if (code == 0) {
        printf("unmounted %s; released %s\n", dir, mmp_path);
    }
    return code;
}
