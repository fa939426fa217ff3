/*
 * event-loop: hold several devices from one thread, with poll(2) on libmmp's event
 * descriptors instead of a loss callback (no self-pipe, no thread of its own).
 *
 *   event-loop [-f] [-t SECONDS] DEVICE...
 *
 * Acquires every DEVICE at once without blocking (mmp_device_acquire_start: libmmp's one
 * heartbeat thread runs the activity tests and claims concurrently, and they heartbeat as
 * soon as they are held), waiting in poll() on one descriptor per device
 * (mmp_device_event_fd) for each MMP_EVENT_ACQUIRE_DONE. All or nothing: the first device
 * refused gives up every other one (mmp_device_release: held ones are released, running
 * acquires aborted and their claims restored), as does SIGTERM/SIGINT. Once all are held it
 * prints "held N device(s)" and waits in poll() on the same descriptors until a device is
 * lost, SIGTERM/SIGINT arrives, or SECONDS pass (default: forever). Then it releases
 * everything.
 * Exit status, as the mmp command's: 0 released cleanly; 1 refused (another host holds a
 * device); 2 error (including a corrupt block or a missing hostid); 3 ownership lost.
 *
 * Identity: hostid from $MMP_HOSTID or /etc/hostid, node name from uname (NULL identity).
 * Build: cc -std=c11 -Wall -Wextra event-loop.c $(pkg-config --cflags --libs mmp)
 */
#define _XOPEN_SOURCE 700 /* sigaction */

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mmp.h>

#define MAX_DEVICES 64

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

/* The mmp command's exit codes: a corrupt block and a missing hostid are errors there. */
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

/* Says why a call on `dev` failed, with the owner or the errno behind it. */
static void report(const char *path, const struct mmp_device *dev, mmp_result r) {
    struct mmp_error_info e;
    if (dev != NULL && mmp_device_last_error(dev, &e) == MMP_RESULT_OK && e.result == r) {
        if (e.owner_valid) {
            fprintf(stderr, "event-loop: %s: %s (held by %s, hostid %08x, last write %llu ms ago)\n",
                    path, mmp_result_str(r), e.owner.nodename, (unsigned)e.owner.hostid,
                    (unsigned long long)e.owner_age_ms);
            return;
        }
        if (e.os_error != 0) {
            fprintf(stderr, "event-loop: %s: %s (%s)\n", path, mmp_result_str(r),
                    strerror(e.os_error));
            return;
        }
    }
    fprintf(stderr, "event-loop: %s: %s\n", path, mmp_result_str(r));
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Gives up every device (released if held, aborted if its acquire runs) and frees it. */
static void give_up_all(struct mmp_device **devs, int n) {
    for (int i = 0; i < n; i++) {
        (void)mmp_device_release(devs[i]);
        mmp_device_free(devs[i]);
    }
}

static int release_all(char **paths, struct mmp_device **devs, int n) {
    int code = 0;
    for (int i = 0; i < n; i++) {
        mmp_result r = mmp_device_release(devs[i]);
        if (r != MMP_RESULT_OK) {
            report(paths[i], devs[i], r);
            if (exit_for(r) > code) {
                code = exit_for(r);
            }
        }
        mmp_device_free(devs[i]);
    }
    return code;
}

int main(int argc, char **argv) {
    bool force = false;
    long seconds = -1;
    int opt;
    while ((opt = getopt(argc, argv, "ft:h")) != -1) {
        switch (opt) {
        case 'f': force = true; break;
        case 't': seconds = strtol(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: event-loop [-f] [-t SECONDS] DEVICE...\n");
            return opt == 'h' ? 0 : 2;
        }
    }
    int n = argc - optind;
    if (n < 1 || n > MAX_DEVICES) {
        fprintf(stderr, "usage: event-loop [-f] [-t SECONDS] DEVICE...\n");
        return 2;
    }
    char **paths = argv + optind;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    /* libmmp's threads inherit the mask: block the signals while they start, so that they
     * always interrupt poll() in this thread. */
    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);

    struct mmp_device *devs[MAX_DEVICES];
    struct pollfd fds[MAX_DEVICES];
    bool done[MAX_DEVICES] = {false};
    int opened = 0;
    for (int i = 0; i < n; i++) {
        struct mmp_device *d = NULL;
        mmp_result r = mmp_device_open(paths[i], NULL, 0, &d);
        if (r == MMP_RESULT_OK) {
            r = mmp_device_event_fd(d, &fds[i].fd);
        }
        if (r == MMP_RESULT_OK) {
            sigprocmask(SIG_BLOCK, &sigs, &old);
            r = mmp_device_acquire_start(d, force, NULL, NULL); /* no callback: the fd */
            sigprocmask(SIG_SETMASK, &old, NULL);
        }
        if (r != MMP_RESULT_OK) {
            report(paths[i], d, r);
            mmp_device_free(d);
            give_up_all(devs, opened);
            return exit_for(r);
        }
        fds[i].events = POLLIN;
        devs[i] = d;
        opened++;
    }
    /* Every acquire runs; wait for their ends. */
    int pending = n;
    mmp_result failed = MMP_RESULT_OK;
    while (pending > 0 && failed == MMP_RESULT_OK && !g_stop) {
        if (poll(fds, (nfds_t)n, -1) < 0 && errno != EINTR) {
            perror("event-loop: poll");
            failed = MMP_RESULT_IO;
            break;
        }
        for (int i = 0; i < n && failed == MMP_RESULT_OK; i++) {
            if (!(fds[i].revents & POLLIN)) {
                continue;
            }
            uint32_t events = 0;
            if (mmp_device_read_events(devs[i], &events, NULL) != MMP_RESULT_OK) {
                failed = MMP_RESULT_IO;
                break;
            }
            if ((events & MMP_EVENT_ACQUIRE_DONE) && !done[i]) {
                done[i] = true;
                pending--;
                mmp_result r = mmp_device_acquire_finish(devs[i]);
                if (r != MMP_RESULT_OK) {
                    report(paths[i], devs[i], r);
                    failed = r;
                }
            }
            if (events & MMP_EVENT_LOST) { /* held, and lost while the others were acquired */
                fprintf(stderr, "event-loop: %s: lost while acquiring the others\n", paths[i]);
                failed = MMP_RESULT_LOST;
            }
        }
    }
    if (failed != MMP_RESULT_OK || g_stop) {
        if (n > 1) {
            fprintf(stderr, "event-loop: giving up every device (all or nothing)\n");
        }
        give_up_all(devs, n);
        return failed != MMP_RESULT_OK ? exit_for(failed) : exit_for(MMP_RESULT_ABORTED);
    }
    int held = n;
    printf("held %d device(s)\n", held);
    fflush(stdout);

    uint64_t end = seconds < 0 ? UINT64_MAX : now_ms() + (uint64_t)seconds * 1000u;
    int code = 0;
    while (!g_stop && code == 0) {
        uint64_t now = now_ms();
        if (now >= end) {
            break;
        }
        int timeout = end == UINT64_MAX ? -1 : (int)(end - now > 60000 ? 60000 : end - now);
        int ready = poll(fds, (nfds_t)n, timeout);
        if (ready < 0 && errno != EINTR) {
            perror("event-loop: poll");
            code = 2;
            break;
        }
        for (int i = 0; ready > 0 && i < n; i++) {
            if (!(fds[i].revents & POLLIN)) {
                continue;
            }
            uint32_t events = 0;
            struct mmp_loss_info loss;
            if (mmp_device_read_events(devs[i], &events, &loss) != MMP_RESULT_OK) {
                code = 2;
                continue;
            }
            if (events & MMP_EVENT_LOST) {
                printf("lost %s: reason %u%s\n", paths[i], (unsigned)loss.reason,
                       loss.reason == MMP_LOSS_FOREIGN_WRITE && loss.found_valid
                           ? " (another host wrote the block)"
                           : "");
                fflush(stdout);
                code = 3;
            }
        }
    }
    int rc = release_all(paths, devs, held);
    if (code == 0) {
        code = rc;
        if (rc == 0) {
            printf("released %d device(s)\n", held);
        }
    }
    return code;
}
