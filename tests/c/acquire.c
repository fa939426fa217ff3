/*
 * Non-blocking acquire (issue 17): mmp_device_acquire_start / _progress / _finish with the
 * event descriptor, as a tool that acquires several devices from one thread uses them.
 *
 *   1. two clean devices acquired concurrently from one thread with poll(): both held, in
 *      less time than two acquires one after the other, progress reported on the way;
 *   2. all or nothing, the second device held by another handle: refused (FOREIGN at
 *      once; with force IN_USE, by the activity test) while the first is still verifying
 *      its claim: giving the first up aborts it and restores its block; or refused after
 *      the first was held: releasing it. Nothing is left claimed, the holder keeps its
 *      device;
 *   3. cancel while watching and while claiming (the claim is restored);
 *   4. misuse: results before, during and after a started acquire; free while one runs;
 *   5. a loss after a started acquire comes through the descriptor like any other.
 *
 * usage: acquire DEVICE1 DEVICE2
 *   two image files or block devices of at least 64 KiB; both are formatted (native, 100 ms
 *   interval, 10 fail intervals: a 1 s fail window) and overwritten.
 *
 * Built by tests/it/c_api.rs with -std=c11 -Wall -Wextra -Wpedantic -Werror and ASan+UBSan.
 */
#define _GNU_SOURCE

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmp.h>

#include "check.h"

#define INTERVAL_MS 100u
#define FAIL_INTERVALS 10u

static const struct mmp_identity ID_A = {0xA1A1A1A1u, "node-a", false};
static const struct mmp_identity ID_B = {0xB2B2B2B2u, "node-b", false};

static const char *DEV1;
static const char *DEV2;

static struct mmp_device *open_as(const char *path, const struct mmp_identity *id, uint32_t flags) {
    struct mmp_device *d = NULL;
    CHECK_RC(mmp_device_open(path, id, flags, &d), MMP_RESULT_OK);
    CHECK(d != NULL);
    return d;
}

static struct mmp_status status_of(const struct mmp_device *d) {
    struct mmp_status st;
    CHECK_RC(mmp_device_status(d, &st), MMP_RESULT_OK);
    return st;
}

static int event_fd(const struct mmp_device *d) {
    int fd = -1;
    CHECK_RC(mmp_device_event_fd(d, &fd), MMP_RESULT_OK);
    CHECK(fd >= 0);
    return fd;
}

static void format_both(void) {
    CHECK_RC(mmp_native_format(DEV1, INTERVAL_MS, FAIL_INTERVALS, true), MMP_RESULT_OK);
    CHECK_RC(mmp_native_format(DEV2, INTERVAL_MS, FAIL_INTERVALS, true), MMP_RESULT_OK);
}

/* A device held by another "host" (another handle with another hostid), heartbeating. */
static struct mmp_device *hold_elsewhere(const char *path) {
    struct mmp_device *h = open_as(path, &ID_B, 0);
    CHECK_RC(mmp_device_acquire(h, false, NULL, NULL), MMP_RESULT_OK);
    CHECK_RC(mmp_device_start_heartbeat(h, NULL, NULL), MMP_RESULT_OK);
    return h;
}

/* The state of one started acquire, as an event loop keeps it. */
struct job {
    struct mmp_device *dev;
    int fd;
    bool done;
    mmp_result result;
    uint64_t done_at_ms; /* CLOCK_MONOTONIC ms when ACQUIRE_DONE was handled */
    bool saw_watching, saw_claiming;
    uint64_t claim_total_ms;
};

/* Waits in poll() on the jobs' descriptors until `stop(jobs)` or `limit_ms`; returns the
 * time waited. Each wake-up reads the events; ACQUIRE_DONE is followed by finish. */
static uint64_t run_loop(struct job *jobs, size_t n, bool (*stop)(const struct job *, size_t),
                         uint64_t limit_ms) {
    uint64_t t0 = now_ms();
    while (!stop(jobs, n)) {
        CHECK(now_ms() - t0 < limit_ms);
        struct pollfd p[4];
        CHECK(n <= 4);
        for (size_t i = 0; i < n; i++) {
            p[i].fd = jobs[i].done ? -1 : jobs[i].fd;
            p[i].events = POLLIN;
            p[i].revents = 0;
        }
        int r = poll(p, (nfds_t)n, 100);
        CHECK(r >= 0);
        for (size_t i = 0; i < n; i++) {
            if (!(p[i].revents & POLLIN)) {
                continue;
            }
            struct job *j = &jobs[i];
            uint32_t ev = 0;
            CHECK_RC(mmp_device_read_events(j->dev, &ev, NULL), MMP_RESULT_OK);
            CHECK((ev & MMP_EVENT_LOST) == 0);
            if (ev & MMP_EVENT_PROGRESS) {
                struct mmp_progress pr;
                mmp_result pr_rc = mmp_device_acquire_progress(j->dev, &pr);
                /* PROGRESS and ACQUIRE_DONE may arrive together: then the progress is
                 * HELD or DONE. */
                CHECK_RC(pr_rc, MMP_RESULT_OK);
                CHECK(pr.remaining_ms <= pr.total_ms);
                if (pr.phase == MMP_PHASE_WATCHING) {
                    j->saw_watching = true;
                } else if (pr.phase == MMP_PHASE_CLAIMING) {
                    j->saw_claiming = true;
                    j->claim_total_ms = pr.total_ms;
                }
            }
            if (ev & MMP_EVENT_ACQUIRE_DONE) {
                CHECK(!j->done);
                j->result = mmp_device_acquire_finish(j->dev);
                CHECK(j->result != MMP_RESULT_PENDING);
                j->done = true;
                j->done_at_ms = now_ms(); /* absolute: callers compare with their own start */
            }
        }
    }
    return now_ms() - t0;
}

static bool all_done(const struct job *jobs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!jobs[i].done) {
            return false;
        }
    }
    return true;
}

static bool any_failed(const struct job *jobs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (jobs[i].done && jobs[i].result != MMP_RESULT_OK) {
            return true;
        }
    }
    return all_done(jobs, n);
}

/* ---- 1. two devices at once from one thread --------------------------------------------- */

static void concurrent_acquires(void) {
    format_both();
    struct job jobs[2] = {{.dev = open_as(DEV1, &ID_A, 0)}, {.dev = open_as(DEV2, &ID_A, 0)}};
    /* At least the block's claim wait (a claim may wait longer: a whole lease and an
     * eighth); progress reports the wait actually used. */
    uint64_t min_claim = status_of(jobs[0].dev).claim_wait_ms;
    CHECK(min_claim >= 200);
    for (size_t i = 0; i < 2; i++) {
        jobs[i].fd = event_fd(jobs[i].dev);
    }
    uint64_t t0 = now_ms();
    for (size_t i = 0; i < 2; i++) {
        CHECK_RC(mmp_device_acquire_start(jobs[i].dev, false, NULL, NULL), MMP_RESULT_OK);
    }
    /* Returns at once: the result is not there yet (a start that waited for the acquire
     * would leave it finished). No wall-clock bound: under valgrind starting the engine's
     * threads alone can take longer than a claim wait. */
    CHECK_RC(mmp_device_acquire_finish(jobs[0].dev), MMP_RESULT_PENDING);
    struct mmp_error_info info;
    CHECK_RC(mmp_device_last_error(jobs[0].dev, &info), MMP_RESULT_OK);
    CHECK(info.result == MMP_RESULT_OK); /* PENDING is not recorded */
    struct mmp_progress pr;
    CHECK_RC(mmp_device_acquire_progress(jobs[0].dev, &pr), MMP_RESULT_OK);
    CHECK(pr.phase == MMP_PHASE_READING || pr.phase == MMP_PHASE_CLAIMING);
    CHECK(!status_of(jobs[0].dev).owned); /* not before it is verified */

    run_loop(jobs, 2, all_done, 10000);
    uint64_t took = now_ms() - t0;
    uint64_t claim_wait = jobs[0].claim_total_ms;
    printf("# two acquires in %llu ms (claim waits %llu and %llu ms)\n",
           (unsigned long long)took, (unsigned long long)claim_wait,
           (unsigned long long)jobs[1].claim_total_ms);
    for (size_t i = 0; i < 2; i++) {
        CHECK_RC(jobs[i].result, MMP_RESULT_OK);
        CHECK(jobs[i].saw_claiming);
        CHECK(jobs[i].claim_total_ms >= min_claim);
        CHECK(!jobs[i].saw_watching); /* clean: no activity test */
        CHECK(jobs[i].done_at_ms - t0 + 20 >= claim_wait); /* from before the starts */
        struct mmp_status st = status_of(jobs[i].dev);
        CHECK(st.owned);
        CHECK(st.state == MMP_STATE_ACTIVE);
        CHECK(st.hostid == ID_A.hostid);
    }
    /* One after the other would take at least both claim waits. */
    CHECK(took < jobs[0].claim_total_ms + jobs[1].claim_total_ms);
    /* The result was taken: there is no started acquire any more. */
    CHECK_RC(mmp_device_acquire_finish(jobs[0].dev), MMP_RESULT_NOT_STARTED);
    CHECK_RC(mmp_device_acquire_progress(jobs[0].dev, &pr), MMP_RESULT_NOT_STARTED);
    /* They heartbeat without mmp_device_start_heartbeat (which says so). */
    CHECK_RC(mmp_device_start_heartbeat(jobs[0].dev, NULL, NULL), MMP_RESULT_ALREADY_HELD);
    uint64_t seq0 = status_of(jobs[0].dev).seq, seq1 = status_of(jobs[1].dev).seq;
    sleep_ms(3 * INTERVAL_MS + 100);
    CHECK(status_of(jobs[0].dev).seq != seq0);
    CHECK(status_of(jobs[1].dev).seq != seq1);
    CHECK(status_of(jobs[0].dev).owned);
    for (size_t i = 0; i < 2; i++) {
        CHECK_RC(mmp_device_release(jobs[i].dev), MMP_RESULT_OK);
        struct mmp_status st = status_of(jobs[i].dev);
        CHECK(st.state == MMP_STATE_CLEAN);
        CHECK(!st.owned);
        mmp_device_free(jobs[i].dev);
    }
}

/* ---- 2. all or nothing ------------------------------------------------------------------ */

/* What a tool does when one of its devices is refused: gives every other one up. */
static mmp_result give_up(struct job *j) {
    if (j->done && j->result != MMP_RESULT_OK) {
        return j->result; /* idle already */
    }
    return mmp_device_release(j->dev);
}

/* The first device is CLEAN, and `before` (when not NULL) is exactly the block it holds. */
static void check_nothing_claimed(struct mmp_device *holder, const struct mmp_status *before) {
    struct mmp_device *look = open_as(DEV1, &ID_A, MMP_OPEN_READ_ONLY);
    struct mmp_status st = status_of(look);
    CHECK(st.state == MMP_STATE_CLEAN);
    CHECK(!st.owned);
    if (before != NULL) {
        CHECK(st.seq == before->seq && st.time_ms == before->time_ms);
        CHECK(st.reason == before->reason);
    } else {
        CHECK(st.reason == MMP_REASON_RELEASED);
    }
    mmp_device_free(look);
    st = status_of(holder);
    CHECK(st.owned);
    CHECK(st.state == MMP_STATE_ACTIVE);
    CHECK(st.hostid == ID_B.hostid);
    CHECK(strcmp(st.nodename, "node-b") == 0);
}

/* `staggered`: the second acquire starts once the first device is held (else both start
 * together, and the second is refused while the first is still verifying its claim). */
static void all_or_nothing(bool force, bool staggered) {
    format_both();
    struct mmp_device *holder = hold_elsewhere(DEV2);
    struct job jobs[2] = {{.dev = open_as(DEV1, &ID_A, 0)}, {.dev = open_as(DEV2, &ID_A, 0)}};
    struct mmp_status before = status_of(jobs[0].dev);
    for (size_t i = 0; i < 2; i++) {
        jobs[i].fd = event_fd(jobs[i].dev);
        CHECK_RC(mmp_device_acquire_start(jobs[i].dev, force, NULL, NULL), MMP_RESULT_OK);
        if (staggered && i == 0) {
            run_loop(jobs, 1, all_done, 5000);
            CHECK_RC(jobs[0].result, MMP_RESULT_OK);
        }
    }
    run_loop(jobs, 2, any_failed, 15000);
    /* The second device is refused: at once without force (another host's live block),
     * by the activity test with force (the holder's heartbeats change the block). */
    CHECK(jobs[1].done);
    CHECK_RC(jobs[1].result, force ? MMP_RESULT_IN_USE : MMP_RESULT_FOREIGN);
    struct mmp_error_info info;
    CHECK_RC(mmp_device_last_error(jobs[1].dev, &info), MMP_RESULT_OK);
    CHECK(info.result == jobs[1].result);
    CHECK(info.owner_valid);
    CHECK(strcmp(info.owner.nodename, "node-b") == 0);
    CHECK(info.owner.hostid == ID_B.hostid);
    if (staggered) {
        /* The first device is held: giving it up releases it. */
        CHECK(status_of(jobs[0].dev).owned);
        CHECK_RC(give_up(&jobs[0]), MMP_RESULT_OK);
    } else {
        /* Refused well within the first device's claim wait (over a second): giving the
         * first up aborts it and puts back the block it found (or, had the claim not been
         * written yet, never writes it): the block is exactly as before. */
        CHECK(!jobs[0].done);
        CHECK_RC(give_up(&jobs[0]), MMP_RESULT_ABORTED);
        CHECK_RC(mmp_device_acquire_finish(jobs[0].dev), MMP_RESULT_NOT_STARTED);
    }
    check_nothing_claimed(holder, staggered ? NULL : &before);
    /* Both handles are idle again. */
    CHECK_RC(mmp_device_release(jobs[0].dev), MMP_RESULT_NOT_HELD);
    CHECK_RC(mmp_device_release(jobs[1].dev), MMP_RESULT_NOT_HELD);
    for (size_t i = 0; i < 2; i++) {
        mmp_device_free(jobs[i].dev);
    }
    CHECK_RC(mmp_device_release(holder), MMP_RESULT_OK);
    mmp_device_free(holder);
}

static void all_or_nothing_foreign(void) { all_or_nothing(false, false); }
static void all_or_nothing_in_use(void) { all_or_nothing(true, false); }
static void all_or_nothing_after_held(void) { all_or_nothing(true, true); }

/* ---- 3. cancel ------------------------------------------------------------------------------ */

/* Waits for the started acquire to report `phase`. */
static void wait_phase(struct job *j, mmp_phase phase) {
    uint64_t t0 = now_ms();
    for (;;) {
        CHECK(now_ms() - t0 < 5000);
        struct pollfd p = {.fd = j->fd, .events = POLLIN};
        CHECK(poll(&p, 1, 100) >= 0);
        struct mmp_progress pr;
        CHECK_RC(mmp_device_acquire_progress(j->dev, &pr), MMP_RESULT_OK);
        if (pr.phase == phase) {
            CHECK(pr.total_ms > 0);
            return;
        }
        if (p.revents & POLLIN) {
            uint32_t ev = 0;
            CHECK_RC(mmp_device_read_events(j->dev, &ev, NULL), MMP_RESULT_OK);
            CHECK((ev & MMP_EVENT_ACQUIRE_DONE) == 0);
        }
    }
}

/* Cancels and waits for the end (ACQUIRE_DONE) in poll(); returns the time it took. */
static uint64_t cancel_and_wait(struct job *j) {
    uint64_t t0 = now_ms();
    CHECK_RC(mmp_device_cancel(j->dev), MMP_RESULT_OK);
    run_loop(j, 1, all_done, 5000);
    return now_ms() - t0;
}

static void cancel_started(void) {
    format_both();
    /* While watching a live holder: ends within the promised 50 ms (plus slack). */
    struct mmp_device *holder = hold_elsewhere(DEV2);
    struct job w = {.dev = open_as(DEV2, &ID_A, 0)};
    w.fd = event_fd(w.dev);
    CHECK_RC(mmp_device_acquire_start(w.dev, true, NULL, NULL), MMP_RESULT_OK);
    wait_phase(&w, MMP_PHASE_WATCHING);
    uint64_t took = cancel_and_wait(&w);
    printf("# cancel while watching: %llu ms\n", (unsigned long long)took);
    CHECK(took < 300);
    CHECK_RC(w.result, MMP_RESULT_ABORTED);
    struct mmp_error_info info;
    CHECK_RC(mmp_device_last_error(w.dev, &info), MMP_RESULT_OK);
    CHECK(info.result == MMP_RESULT_ABORTED);
    CHECK(status_of(holder).owned);
    /* A cancel with nothing in flight does nothing to the next acquire. */
    CHECK_RC(mmp_device_cancel(w.dev), MMP_RESULT_OK);
    mmp_device_free(w.dev);
    CHECK_RC(mmp_device_release(holder), MMP_RESULT_OK);
    mmp_device_free(holder);

    /* While claiming: the claim is restored, the device is CLEAN again, and the handle can
     * acquire afterwards (the earlier cancel is not carried over). */
    struct job c = {.dev = open_as(DEV1, &ID_A, 0)};
    c.fd = event_fd(c.dev);
    CHECK_RC(mmp_device_cancel(c.dev), MMP_RESULT_OK);
    CHECK_RC(mmp_device_acquire_start(c.dev, false, NULL, NULL), MMP_RESULT_OK);
    wait_phase(&c, MMP_PHASE_CLAIMING);
    CHECK(status_of(c.dev).state == MMP_STATE_ACTIVE); /* our claim is on the device */
    cancel_and_wait(&c);
    CHECK_RC(c.result, MMP_RESULT_ABORTED);
    struct mmp_status st = status_of(c.dev);
    CHECK(st.state == MMP_STATE_CLEAN);
    CHECK(!st.owned);
    c.done = false;
    CHECK_RC(mmp_device_acquire_start(c.dev, false, NULL, NULL), MMP_RESULT_OK);
    run_loop(&c, 1, all_done, 5000);
    CHECK_RC(c.result, MMP_RESULT_OK);
    CHECK_RC(mmp_device_release(c.dev), MMP_RESULT_OK);
    mmp_device_free(c.dev);
}

/* ---- 4. misuse -------------------------------------------------------------------------- */

static void misuse(void) {
    format_both();
    CHECK_RC(mmp_device_acquire_start(NULL, false, NULL, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_acquire_finish(NULL), MMP_RESULT_NULL_PARAMETER);
    struct mmp_progress pr;
    CHECK_RC(mmp_device_acquire_progress(NULL, &pr), MMP_RESULT_NULL_PARAMETER);

    struct mmp_device *ro = open_as(DEV1, &ID_A, MMP_OPEN_READ_ONLY);
    CHECK_RC(mmp_device_acquire_start(ro, false, NULL, NULL), MMP_RESULT_READ_ONLY);
    mmp_device_free(ro);

    /* A refusal at the first read comes from finish, like any other. */
    struct job nohost = {.dev = open_as(DEV1, &(struct mmp_identity){0, "node-z", false}, 0)};
    nohost.fd = event_fd(nohost.dev);
    CHECK_RC(mmp_device_acquire_start(nohost.dev, false, NULL, NULL), MMP_RESULT_OK);
    run_loop(&nohost, 1, all_done, 5000);
    CHECK_RC(nohost.result, MMP_RESULT_NO_HOSTID);
    CHECK_RC(mmp_device_acquire_finish(nohost.dev), MMP_RESULT_NOT_STARTED);
    mmp_device_free(nohost.dev);

    struct mmp_device *d = open_as(DEV1, &ID_A, 0);
    CHECK_RC(mmp_device_acquire_finish(d), MMP_RESULT_NOT_STARTED);
    CHECK_RC(mmp_device_acquire_progress(d, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_acquire_progress(d, &pr), MMP_RESULT_NOT_STARTED);
    CHECK_RC(mmp_device_acquire_start(d, false, NULL, NULL), MMP_RESULT_OK);
    /* While it runs, the other operations say BUSY; status, progress and last_error work. */
    CHECK_RC(mmp_device_acquire_start(d, false, NULL, NULL), MMP_RESULT_BUSY);
    CHECK_RC(mmp_device_acquire(d, false, NULL, NULL), MMP_RESULT_BUSY);
    CHECK_RC(mmp_device_check(d, NULL, NULL, NULL), MMP_RESULT_BUSY);
    CHECK_RC(mmp_device_start_heartbeat(d, NULL, NULL), MMP_RESULT_BUSY);
    CHECK_RC(mmp_device_clear(d), MMP_RESULT_BUSY);
    (void)status_of(d);
    CHECK_RC(mmp_device_acquire_progress(d, &pr), MMP_RESULT_OK);
    /* Free while it runs: aborted and restored, nothing leaks (LeakSanitizer). */
    mmp_device_free(d);
    struct mmp_device *look = open_as(DEV1, &ID_A, MMP_OPEN_READ_ONLY);
    CHECK(status_of(look).state == MMP_STATE_CLEAN);
    mmp_device_free(look);

    /* Free once it ended but before finish: the held device is released. */
    d = open_as(DEV1, &ID_A, 0);
    struct job j = {.dev = d, .fd = event_fd(d)};
    CHECK_RC(mmp_device_acquire_start(d, false, NULL, NULL), MMP_RESULT_OK);
    uint64_t t0 = now_ms();
    for (;;) {
        CHECK(now_ms() - t0 < 5000);
        struct pollfd p = {.fd = j.fd, .events = POLLIN};
        CHECK(poll(&p, 1, 100) >= 0);
        uint32_t ev = 0;
        CHECK_RC(mmp_device_read_events(d, &ev, NULL), MMP_RESULT_OK);
        if (ev & MMP_EVENT_ACQUIRE_DONE) {
            break;
        }
    }
    CHECK(status_of(d).owned);
    mmp_device_free(d);
    look = open_as(DEV1, &ID_A, MMP_OPEN_READ_ONLY);
    CHECK(status_of(look).state == MMP_STATE_CLEAN);
    mmp_device_free(look);
}

/* ---- 5. a loss after a started acquire ------------------------------------------------ */

static void loss_after_start(void) {
    format_both();
    struct job j = {.dev = open_as(DEV1, &ID_A, 0)};
    j.fd = event_fd(j.dev);
    CHECK_RC(mmp_device_acquire_start(j.dev, false, NULL, NULL), MMP_RESULT_OK);
    run_loop(&j, 1, all_done, 5000);
    CHECK_RC(j.result, MMP_RESULT_OK);
    /* Another host's operator resets the block: the heartbeat notices within an interval. */
    struct mmp_device *other = open_as(DEV1, &ID_B, 0);
    CHECK_RC(mmp_device_clear(other), MMP_RESULT_OK);
    uint64_t t0 = now_ms();
    for (;;) {
        CHECK(now_ms() - t0 < 2000);
        struct pollfd p = {.fd = j.fd, .events = POLLIN};
        CHECK(poll(&p, 1, 100) >= 0);
        uint32_t ev = 0;
        struct mmp_loss_info loss;
        CHECK_RC(mmp_device_read_events(j.dev, &ev, &loss), MMP_RESULT_OK);
        CHECK((ev & MMP_EVENT_ACQUIRE_DONE) == 0);
        if (ev & MMP_EVENT_LOST) {
            CHECK(loss.reason == MMP_LOSS_FOREIGN_WRITE);
            break;
        }
    }
    CHECK(!status_of(j.dev).owned);
    CHECK_RC(mmp_device_release(j.dev), MMP_RESULT_LOST);
    mmp_device_free(j.dev);
    mmp_device_free(other);
}

/* check.h's RUN needs an argument: these tests take none. */
#define RUN0(test)                                                                         \
    do {                                                                                   \
        uint64_t t0_ = now_ms();                                                           \
        test();                                                                            \
        printf("ok - %s (%llu ms)\n", #test, (unsigned long long)(now_ms() - t0_));       \
        fflush(stdout);                                                                    \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s DEVICE1 DEVICE2\n", argv[0]);
        return 2;
    }
    DEV1 = argv[1];
    DEV2 = argv[2];
    RUN0(concurrent_acquires);
    RUN0(all_or_nothing_foreign);
    RUN0(all_or_nothing_in_use);
    RUN0(all_or_nothing_after_held);
    RUN0(cancel_started);
    RUN0(misuse);
    RUN0(loss_after_start);
    printf("all passed\n");
    return 0;
}
