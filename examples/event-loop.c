/*
 * event-loop: hold several devices from one thread, with poll(2) on libmmp's event
 * descriptors instead of a loss callback (no self-pipe, no thread of its own).
 *
 *   event-loop [-f] [-t SECONDS] DEVICE...
 *
 * Acquires every DEVICE in turn (all or nothing: a refusal releases the ones already
 * held), starts their heartbeats, prints "held N device(s)", then waits in poll() on one
 * descriptor per device (mmp_device_event_fd) until a device is lost, SIGTERM/SIGINT
 * arrives, or SECONDS pass (default: forever). Then it releases everything.
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
    int held = 0;
    for (int i = 0; i < n; i++) {
        struct mmp_device *d = NULL;
        mmp_result r = mmp_device_open(paths[i], NULL, 0, &d);
        if (r == MMP_RESULT_OK) {
            r = mmp_device_acquire(d, force, NULL, NULL);
        }
        if (r == MMP_RESULT_OK) {
            sigprocmask(SIG_BLOCK, &sigs, &old);
            r = mmp_device_start_heartbeat(d, NULL, NULL); /* no callback: the fd instead */
            sigprocmask(SIG_SETMASK, &old, NULL);
        }
        if (r == MMP_RESULT_OK) {
            r = mmp_device_event_fd(d, &fds[i].fd);
        }
        if (r != MMP_RESULT_OK) {
            report(paths[i], d, r);
            mmp_device_free(d); /* releases it if it got that far */
            release_all(paths, devs, held);
            return exit_for(r);
        }
        fds[i].events = POLLIN;
        devs[i] = d;
        held++;
    }
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
