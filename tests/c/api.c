/*
 * The libmmp C API end to end, on one device: status, check, acquire, heartbeat, loss
 * callbacks (foreign write by a second handle and by a raw write), release, a crashed
 * holder taken over, cancel, read-only handles, hostid, and the error paths (NULL
 * pointers, bad devices, a corrupt block, a missing path).
 *
 * usage: api DEVICE SCRATCH_DIR
 *   DEVICE       an image file or block device of at least 64 KiB; it is formatted (native,
 *                100 ms interval, 10 fail intervals) and overwritten
 *   SCRATCH_DIR  a directory for the bad-device files
 * Environment: MMP_TEST_LOSS_BOUND_MS (default 300): the longest acceptable time between a
 * foreign write and the loss callback. MMP_HOSTID is set and changed by the program.
 *
 * Built by tests/it/c_api.rs with -std=c11 -Wall -Wextra -Wpedantic -Werror, once with
 * ASan+UBSan and once for valgrind.
 */
#define _GNU_SOURCE /* O_DIRECT, setenv */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mmp.h>

#include "check.h"

#ifndef INTERVAL_MS
#define INTERVAL_MS 100u
#endif
#ifndef FAIL_INTERVALS
/* Instrumented builds (ASan, valgrind) pass a longer fail window: on a loaded machine their
 * slowed heartbeat thread must not lose the device in tests that hold it. */
#define FAIL_INTERVALS 10u
#endif

struct ctx {
    const char *dev;
    const char *scratch;
    uint64_t loss_bound_ms;
};

static const struct mmp_identity ID_A = {0xA1A1A1A1u, "node-a", false};
static const struct mmp_identity ID_B = {0xB2B2B2B2u, "node-b", false};

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

static void format_device(const struct ctx *c) {
    CHECK_RC(mmp_native_format(c->dev, INTERVAL_MS, FAIL_INTERVALS, true), MMP_RESULT_OK);
}

/* Progress callbacks: counts calls per phase and checks the numbers make sense. */
struct progress {
    unsigned calls[8];
    uint64_t last_total_ms;
    struct mmp_device *dev; /* when set, re-entering it (release) must give MMP_RESULT_BUSY */
    mmp_result reentry;
};

static void on_progress(void *userdata, mmp_phase phase, uint64_t remaining_ms, uint64_t total_ms) {
    struct progress *p = userdata;
    CHECK(phase <= MMP_PHASE_DONE);
    CHECK(remaining_ms <= total_ms);
    p->calls[phase]++;
    p->last_total_ms = total_ms;
    if (p->dev != NULL) {
        /* Status never waits for the call in progress, so it works from its callback;
         * any other call on the handle would wait for itself: BUSY. */
        struct mmp_status st;
        CHECK_RC(mmp_device_status(p->dev, &st), MMP_RESULT_OK);
        CHECK(!st.owned);
        p->reentry = mmp_device_release(p->dev);
    }
}

/* Loss callbacks run on the handle's event thread: everything shared is atomic, and the
 * info is copied before `fired` is set. */
struct loss {
    _Atomic int fired;
    _Atomic uint64_t at_ms;
    struct mmp_loss_info info;
    struct mmp_device *dev;
    mmp_result release_from_callback;
};

static void on_loss(void *userdata, const struct mmp_loss_info *info) {
    struct loss *l = userdata;
    CHECK(info != NULL);
    l->info = *info;
    if (l->dev != NULL) {
        l->release_from_callback = mmp_device_release(l->dev);
    }
    atomic_store(&l->at_ms, now_ms());
    atomic_fetch_add(&l->fired, 1);
}

static bool wait_for_loss(struct loss *l, uint64_t timeout_ms) {
    uint64_t end = now_ms() + timeout_ms;
    while (atomic_load(&l->fired) == 0) {
        if (now_ms() > end) {
            return false;
        }
        sleep_ms(5);
    }
    return true;
}

/* Rewrites the first 4 KiB of the device with one byte flipped in the record (the area id,
 * covered by the checksum): a foreign, corrupt write. O_DIRECT where possible, so the
 * library's direct reads see it at once. */
static void corrupt_record(const char *path) {
    int fd = open(path, O_RDWR | O_DIRECT | O_SYNC);
    if (fd < 0 && errno == EINVAL) {
        fd = open(path, O_RDWR | O_SYNC);
    }
    CHECK(fd >= 0);
    void *buf = NULL;
    CHECK(posix_memalign(&buf, 4096, 4096) == 0);
    CHECK(pread(fd, buf, 4096, 0) == 4096);
    ((unsigned char *)buf)[0x30] ^= 0xFF;
    CHECK(pwrite(fd, buf, 4096, 0) == 4096);
    CHECK(fsync(fd) == 0);
    free(buf);
    CHECK(close(fd) == 0);
}

/* A foreign write can land inside the holder's heartbeat read-to-write window (well under
 * a millisecond on a loop device, more under ASan); the holder's write then covers it and
 * nobody can ever see it, with the kernel's kmmpd exactly as with us (docs/protocol.md,
 * "A foreign write inside the read-to-write window"). When that happened (no loss within
 * the bound, and the block shows the holder's live heartbeat again) the foreign write is
 * repeated, at most three times. Returns when the write was made that the loss followed. */
static uint64_t foreign_write_until_lost(const struct ctx *c, struct loss *l,
                                         const struct mmp_device *reader, uint32_t holder,
                                         void (*write)(const struct ctx *, const void *),
                                         const void *arg) {
    for (int attempt = 1;; attempt++) {
        write(c, arg);
        uint64_t written = now_ms();
        if (wait_for_loss(l, c->loss_bound_ms)) {
            return written;
        }
        struct mmp_status st;
        bool covered = mmp_device_status(reader, &st) == MMP_RESULT_OK && st.hostid == holder &&
                       st.state == MMP_STATE_ACTIVE;
        CHECK(covered); /* anything else: the holder failed to notice a surviving write */
        CHECK(attempt < 3);
        printf("# foreign write %d covered by the holder's in-flight heartbeat; again\n",
               attempt);
    }
}

static void write_clear(const struct ctx *c, const void *arg) {
    (void)c;
    CHECK_RC(mmp_device_clear((struct mmp_device *)arg), MMP_RESULT_OK);
}

static void write_corrupt(const struct ctx *c, const void *arg) {
    (void)arg;
    corrupt_record(c->dev);
}

static void test_version(const struct ctx *c) {
    (void)c;
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", MMP_VERSION_MAJOR, MMP_VERSION_MINOR,
             MMP_VERSION_PATCH);
    CHECK(strcmp(mmp_version(), want) == 0);
    CHECK(MMP_VERSION_NUMBER ==
          ((MMP_VERSION_MAJOR << 16) | (MMP_VERSION_MINOR << 8) | MMP_VERSION_PATCH));
    CHECK(mmp_version_number() == MMP_VERSION_NUMBER);
}

static void test_result_str(const struct ctx *c) {
    (void)c;
    const char *invalid = mmp_result_str(MMP_RESULT_INVALID_PARAMETER);
    CHECK(invalid != NULL && invalid[0] != '\0');
    CHECK(strcmp(mmp_result_str(9999), invalid) == 0);
    CHECK(strcmp(mmp_result_str(UINT32_MAX), invalid) == 0);
    CHECK(strcmp(mmp_result_str(50), invalid) == 0);
    CHECK(strcmp(mmp_result_str(MMP_RESULT_OK), "success") == 0);
    CHECK(strcmp(mmp_result_str(MMP_RESULT_LOST), invalid) != 0);
    CHECK(strcmp(mmp_result_str(MMP_RESULT_IN_USE), mmp_result_str(MMP_RESULT_FOREIGN)) != 0);
    CHECK(mmp_result_is_refusal(MMP_RESULT_IN_USE));
    CHECK(mmp_result_is_refusal(MMP_RESULT_CORRUPT));
    CHECK(!mmp_result_is_refusal(MMP_RESULT_OK));
    CHECK(!mmp_result_is_refusal(MMP_RESULT_IO));
    CHECK(mmp_result_is_error(MMP_RESULT_NULL_PARAMETER));
    CHECK(!mmp_result_is_error(MMP_RESULT_LOST));
}

static void test_null_parameters(const struct ctx *c) {
    struct mmp_device *const sentinel = (struct mmp_device *)(uintptr_t)0x5a5a;
    struct mmp_device *d = sentinel;
    CHECK_RC(mmp_device_open(NULL, &ID_A, 0, &d), MMP_RESULT_NULL_PARAMETER);
    CHECK(d == sentinel); /* out-parameters are written only on success */
    CHECK_RC(mmp_device_open(c->dev, &ID_A, 0, NULL), MMP_RESULT_NULL_PARAMETER);

    struct mmp_device *dev = open_as(c->dev, &ID_A, 0);
    struct mmp_status st;
    memset(&st, 0xA5, sizeof st);
    struct mmp_status before = st;
    CHECK_RC(mmp_device_status(NULL, &st), MMP_RESULT_NULL_PARAMETER);
    CHECK(memcmp(&st, &before, sizeof st) == 0);
    CHECK_RC(mmp_device_status(dev, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_check(NULL, NULL, NULL, &st), MMP_RESULT_NULL_PARAMETER);
    /* The owner is optional: "NULL or writable" (a clean block: no wait). */
    CHECK_RC(mmp_device_check(dev, NULL, NULL, NULL), MMP_RESULT_OK);
    uint32_t events = 0;
    int fd = -1;
    struct mmp_error_info info;
    CHECK_RC(mmp_device_last_error(NULL, &info), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_last_error(dev, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_event_fd(NULL, &fd), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_event_fd(dev, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_read_events(NULL, &events, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_read_events(dev, NULL, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK(fd == -1);
    CHECK_RC(mmp_device_acquire(NULL, false, NULL, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_start_heartbeat(NULL, NULL, NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_release(NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_clear(NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_device_cancel(NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_hostid_get(NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_ext4_enable(NULL, 5), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_ext4_disable(NULL, true), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_ext4_set_interval(NULL, 5), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_native_format(NULL, INTERVAL_MS, FAIL_INTERVALS, false), MMP_RESULT_NULL_PARAMETER);
    mmp_device_free(NULL);
    mmp_device_free(dev);

    /* A NULL node name means uname's; a NULL identity resolves everything. */
    struct mmp_identity no_name = {0x1234u, NULL, false};
    dev = open_as(c->dev, &no_name, 0);
    mmp_device_free(dev);
    dev = open_as(c->dev, NULL, 0);
    mmp_device_free(dev);
}

static void write_file(const char *path, size_t len, unsigned char byte) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    for (size_t i = 0; i < len; i++) {
        CHECK(fputc(byte, f) != EOF);
    }
    CHECK(fclose(f) == 0);
}

static void test_bad_devices(const struct ctx *c) {
    char path[4096];
    struct mmp_device *const sentinel = (struct mmp_device *)(uintptr_t)0x5a5a;
    struct mmp_device *d = sentinel;

    snprintf(path, sizeof path, "%s/missing", c->scratch);
    CHECK_RC(mmp_device_open(path, &ID_A, 0, &d), MMP_RESULT_NOT_FOUND);
    CHECK_RC(mmp_native_format(path, INTERVAL_MS, FAIL_INTERVALS, false), MMP_RESULT_NOT_FOUND);
    CHECK_RC(mmp_ext4_enable(path, 5), MMP_RESULT_NOT_FOUND);
    CHECK_RC(mmp_device_open("", &ID_A, 0, &d), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_device_open(c->scratch, &ID_A, 0, &d), MMP_RESULT_NOT_A_DEVICE);

    snprintf(path, sizeof path, "%s/zeros", c->scratch);
    write_file(path, 256 * 1024, 0);
    CHECK_RC(mmp_device_open(path, &ID_A, 0, &d), MMP_RESULT_NOT_MMP);
    CHECK_RC(mmp_ext4_enable(path, 5), MMP_RESULT_NOT_EXT4);
    CHECK_RC(mmp_ext4_disable(path, true), MMP_RESULT_NOT_MMP);

    snprintf(path, sizeof path, "%s/tiny", c->scratch);
    write_file(path, 1024, 0);
    CHECK_RC(mmp_device_open(path, &ID_A, 0, &d), MMP_RESULT_NOT_MMP);
    CHECK_RC(mmp_native_format(path, INTERVAL_MS, FAIL_INTERVALS, false), MMP_RESULT_NOT_MMP);

    /* Bytes that are not UTF-8 are fine in paths. */
    snprintf(path, sizeof path, "%s/caf\xe9-\xff", c->scratch);
    write_file(path, 64 * 1024, 0);
    CHECK_RC(mmp_native_format(path, INTERVAL_MS, FAIL_INTERVALS, false), MMP_RESULT_OK);
    struct mmp_device *odd = open_as(path, &ID_A, 0);
    struct mmp_status st = status_of(odd);
    CHECK(st.format == MMP_FORMAT_NATIVE && st.state == MMP_STATE_CLEAN);
    mmp_device_free(odd);
    CHECK(d == sentinel);

    CHECK_RC(mmp_device_open(c->dev, &ID_A, 0x80, &d), MMP_RESULT_INVALID_PARAMETER);
    struct mmp_identity empty = {1, "", false};
    CHECK_RC(mmp_device_open(c->dev, &empty, 0, &d), MMP_RESULT_INVALID_PARAMETER);
    CHECK(d == sentinel);

    CHECK_RC(mmp_native_format(c->dev, 50, FAIL_INTERVALS, true), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_native_format(c->dev, 300001, FAIL_INTERVALS, true), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_native_format(c->dev, INTERVAL_MS, 1, true), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_native_format(c->dev, INTERVAL_MS, 70000, true), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_ext4_enable(c->dev, 0), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_ext4_enable(c->dev, 301), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_ext4_set_interval(c->dev, 0), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_ext4_enable(c->dev, 5), MMP_RESULT_NOT_EXT4);
}

static void test_status_and_check_clean(const struct ctx *c) {
    format_device(c);
    struct mmp_device *dev = open_as(c->dev, &ID_A, 0);
    struct mmp_status st = status_of(dev);
    CHECK(st.format == MMP_FORMAT_NATIVE);
    CHECK(st.state == MMP_STATE_CLEAN);
    CHECK(st.has_hostid);
    CHECK(!st.owned);
    CHECK(st.interval_ms == INTERVAL_MS);
    CHECK(st.fail_window_ms == INTERVAL_MS * FAIL_INTERVALS);
    CHECK(st.watch_ms >= 2 * st.fail_window_ms);
    CHECK(st.claim_wait_ms >= 2 * INTERVAL_MS);
    CHECK(memchr(st.nodename, '\0', sizeof st.nodename) != NULL);
    CHECK(memchr(st.devname, '\0', sizeof st.devname) != NULL);
    /* What `mmp status --json` shows besides. */
    CHECK(st.never_held);
    CHECK(st.reason == MMP_REASON_FORMATTED);
    CHECK(st.since_ms == 0);
    CHECK(st.fail_intervals == FAIL_INTERVALS);
    CHECK(st.delay_us == 0);
    CHECK(st.check_interval_s == 0 && st.update_interval_s == 0); /* ext4 only */
    CHECK(st.offset_bytes == 0);
    /* Clean: the claim wait (at least a lease and an eighth); after a crash the activity
     * test comes first. */
    CHECK(st.acquire_wait_ms >= st.fail_window_ms + st.fail_window_ms / 8);
    CHECK(st.acquire_wait_ms >= st.claim_wait_ms);
    CHECK(st.takeover_wait_ms == st.watch_ms + st.acquire_wait_ms);

    struct progress p = {0};
    struct mmp_status owner;
    CHECK_RC(mmp_device_check(dev, on_progress, &p, &owner), MMP_RESULT_OK);
    CHECK(owner.state == MMP_STATE_CLEAN);
    CHECK(!owner.owned);
    mmp_device_free(dev);
}

static void test_acquire_heartbeat_release(const struct ctx *c) {
    format_device(c);
    struct mmp_device *a = open_as(c->dev, &ID_A, 0);
    struct mmp_device *b = open_as(c->dev, &ID_B, 0);

    /* Acquire, with progress; re-entering the handle from its callback is refused. */
    struct progress p = {0};
    p.dev = a;
    p.reentry = MMP_RESULT_OK;
    CHECK_RC(mmp_device_acquire(a, false, on_progress, &p), MMP_RESULT_OK);
    CHECK(p.calls[MMP_PHASE_CLAIMING] > 0);
    CHECK(p.reentry == MMP_RESULT_BUSY);
    CHECK(status_of(a).owned);
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_ALREADY_HELD);
    struct mmp_status owner;
    CHECK_RC(mmp_device_check(a, NULL, NULL, &owner), MMP_RESULT_ALREADY_HELD);
    CHECK_RC(mmp_device_clear(a), MMP_RESULT_ALREADY_HELD);

    struct loss l = {0};
    CHECK_RC(mmp_device_start_heartbeat(a, on_loss, &l), MMP_RESULT_OK);
    CHECK_RC(mmp_device_start_heartbeat(a, on_loss, &l), MMP_RESULT_ALREADY_HELD);

    /* Another host sees it held by A, heartbeating. */
    struct mmp_status s1 = status_of(b);
    CHECK(s1.state == MMP_STATE_ACTIVE);
    CHECK(s1.hostid == ID_A.hostid);
    CHECK(strcmp(s1.nodename, "node-a") == 0);
    CHECK(!s1.owned);
    sleep_ms(5 * INTERVAL_MS);
    struct mmp_status s2 = status_of(b);
    CHECK(s2.seq != s1.seq);
    CHECK(s2.time_ms >= s1.time_ms);
    CHECK(status_of(a).owned);

    /* ... and cannot take it: not without force, and not with force (A is alive). */
    CHECK_RC(mmp_device_acquire(b, false, NULL, NULL), MMP_RESULT_FOREIGN);
    struct progress pb = {0};
    uint64_t t0 = now_ms();
    CHECK_RC(mmp_device_check(b, on_progress, &pb, &owner), MMP_RESULT_IN_USE);
    CHECK(now_ms() - t0 < 2 * s1.watch_ms + 1000);
    CHECK(pb.calls[MMP_PHASE_WATCHING] > 0);
    CHECK_RC(mmp_device_acquire(b, true, NULL, NULL), MMP_RESULT_IN_USE);
    CHECK_RC(mmp_native_format(c->dev, INTERVAL_MS, FAIL_INTERVALS, false),
             MMP_RESULT_WOULD_OVERWRITE);

    /* Release writes CLEAN; the handle can go again. */
    CHECK_RC(mmp_device_release(a), MMP_RESULT_OK);
    CHECK(atomic_load(&l.fired) == 0);
    CHECK(!status_of(a).owned);
    CHECK(status_of(b).state == MMP_STATE_CLEAN);
    CHECK_RC(mmp_device_release(a), MMP_RESULT_NOT_HELD);
    CHECK_RC(mmp_device_start_heartbeat(a, NULL, NULL), MMP_RESULT_NOT_HELD);

    /* B takes it now, and releases without ever starting the heartbeat. */
    CHECK_RC(mmp_device_acquire(b, false, NULL, NULL), MMP_RESULT_OK);
    CHECK(status_of(a).hostid == ID_B.hostid);
    CHECK_RC(mmp_device_release(b), MMP_RESULT_OK);
    CHECK(status_of(a).state == MMP_STATE_CLEAN);

    /* Freeing a handle that heartbeats releases it. */
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_OK);
    CHECK_RC(mmp_device_start_heartbeat(a, NULL, NULL), MMP_RESULT_OK);
    mmp_device_free(a);
    CHECK(status_of(b).state == MMP_STATE_CLEAN);
    mmp_device_free(b);
}

static void test_loss_by_second_handle(const struct ctx *c) {
    format_device(c);
    struct mmp_device *a = open_as(c->dev, &ID_A, 0);
    struct mmp_device *b = open_as(c->dev, &ID_B, 0);
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_OK);
    struct loss l = {0};
    l.dev = a; /* the callback tries to release from inside: refused */
    CHECK_RC(mmp_device_start_heartbeat(a, on_loss, &l), MMP_RESULT_OK);
    /* Half an interval off the heartbeat's schedule, away from its read-to-write window. */
    sleep_ms(3 * INTERVAL_MS + INTERVAL_MS / 2);
    CHECK(atomic_load(&l.fired) == 0);

    /* An operator clears the block from another node while A holds it. */
    uint64_t written = foreign_write_until_lost(c, &l, b, ID_A.hostid, write_clear, b);
    uint64_t latency = atomic_load(&l.at_ms) - written;
    printf("# loss callback %llu ms after the foreign write (interval %u ms)\n",
           (unsigned long long)latency, INTERVAL_MS);
    CHECK(latency <= c->loss_bound_ms);
    CHECK(l.info.reason == MMP_LOSS_FOREIGN_WRITE);
    CHECK(l.info.found_valid);
    CHECK(l.info.found.state == MMP_STATE_CLEAN);
    CHECK(l.release_from_callback == MMP_RESULT_IN_CALLBACK);

    CHECK(!status_of(a).owned);
    sleep_ms(3 * INTERVAL_MS);
    CHECK(atomic_load(&l.fired) == 1); /* once per loss */
    CHECK(status_of(b).state == MMP_STATE_CLEAN); /* A wrote nothing more */
    CHECK_RC(mmp_device_release(a), MMP_RESULT_LOST);
    CHECK_RC(mmp_device_release(a), MMP_RESULT_NOT_HELD);
    mmp_device_free(a);
    mmp_device_free(b);
}

static void test_loss_by_raw_write_and_corrupt_block(const struct ctx *c) {
    format_device(c);
    struct mmp_device *a = open_as(c->dev, &ID_A, 0);
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_OK);
    struct loss l = {0};
    CHECK_RC(mmp_device_start_heartbeat(a, on_loss, &l), MMP_RESULT_OK);
    sleep_ms(2 * INTERVAL_MS + INTERVAL_MS / 2); /* off the heartbeat's schedule */

    struct mmp_device *reader = open_as(c->dev, &ID_B, 0);
    uint64_t written = foreign_write_until_lost(c, &l, reader, ID_A.hostid, write_corrupt, NULL);
    mmp_device_free(reader);
    uint64_t latency = atomic_load(&l.at_ms) - written;
    printf("# loss callback %llu ms after the raw write\n", (unsigned long long)latency);
    CHECK(latency <= c->loss_bound_ms);
    CHECK(l.info.reason == MMP_LOSS_FOREIGN_WRITE);
    CHECK(!l.info.found_valid);
    CHECK_RC(mmp_device_release(a), MMP_RESULT_LOST);

    /* The corrupt block: nobody may trust it, and out-parameters stay untouched. */
    struct mmp_status st;
    memset(&st, 0xA5, sizeof st);
    struct mmp_status before = st;
    CHECK_RC(mmp_device_status(a, &st), MMP_RESULT_CORRUPT);
    CHECK_RC(mmp_device_check(a, NULL, NULL, &st), MMP_RESULT_CORRUPT);
    CHECK(memcmp(&st, &before, sizeof st) == 0);
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_CORRUPT);
    CHECK_RC(mmp_device_acquire(a, true, NULL, NULL), MMP_RESULT_CORRUPT);
    struct mmp_device *b = open_as(c->dev, &ID_B, 0);
    CHECK_RC(mmp_device_status(b, &st), MMP_RESULT_CORRUPT);
    CHECK_RC(mmp_native_format(c->dev, INTERVAL_MS, FAIL_INTERVALS, false),
             MMP_RESULT_WOULD_OVERWRITE);

    /* A native record that does not parse cannot be cleared (its parameters are gone):
     * the operator reformats it. */
    CHECK_RC(mmp_device_clear(b), MMP_RESULT_CORRUPT);
    CHECK_RC(mmp_native_format(c->dev, INTERVAL_MS, FAIL_INTERVALS, true), MMP_RESULT_OK);
    CHECK(status_of(a).state == MMP_STATE_CLEAN);
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_OK);
    CHECK_RC(mmp_device_release(a), MMP_RESULT_OK);
    mmp_device_free(a);
    mmp_device_free(b);
}

/* A holder that dies without releasing (SIGKILL): another host sees it active, is refused
 * without force, finds it stale with the activity test, and takes it with force. */
static void test_crashed_holder_takeover(const struct ctx *c) {
    format_device(c);
    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pipefd[0]);
        struct mmp_device *a = NULL;
        if (mmp_device_open(c->dev, &ID_A, 0, &a) != MMP_RESULT_OK ||
            mmp_device_acquire(a, false, NULL, NULL) != MMP_RESULT_OK ||
            mmp_device_start_heartbeat(a, NULL, NULL) != MMP_RESULT_OK) {
            _exit(1);
        }
        char byte = 'h';
        if (write(pipefd[1], &byte, 1) != 1) {
            _exit(1);
        }
        for (;;) {
            pause();
        }
    }
    close(pipefd[1]);
    char byte = 0;
    CHECK(read(pipefd[0], &byte, 1) == 1 && byte == 'h');
    close(pipefd[0]);
    sleep_ms(3 * INTERVAL_MS);
    CHECK(kill(pid, SIGKILL) == 0);
    int wstatus = 0;
    CHECK(waitpid(pid, &wstatus, 0) == pid);
    CHECK(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);

    struct mmp_device *b = open_as(c->dev, &ID_B, 0);
    struct mmp_status st = status_of(b);
    CHECK(st.state == MMP_STATE_ACTIVE);
    CHECK(st.hostid == ID_A.hostid);
    CHECK_RC(mmp_device_acquire(b, false, NULL, NULL), MMP_RESULT_FOREIGN);

    struct progress p = {0};
    struct mmp_status owner;
    uint64_t t0 = now_ms();
    CHECK_RC(mmp_device_check(b, on_progress, &p, &owner), MMP_RESULT_OK);
    CHECK(now_ms() - t0 + 50 >= st.watch_ms);
    CHECK(p.calls[MMP_PHASE_WATCHING] > 0);
    CHECK(p.last_total_ms > 0);
    CHECK(owner.state == MMP_STATE_ACTIVE);
    CHECK(owner.hostid == ID_A.hostid);

    CHECK(st.acquire_wait_ms == st.takeover_wait_ms); /* not clean */
    CHECK(!st.never_held);
    uint64_t since_a = st.since_ms;
    CHECK(since_a > 0 && since_a <= st.time_ms);

    uint64_t before_ms = (uint64_t)time(NULL) * 1000u;
    CHECK_RC(mmp_device_acquire(b, true, NULL, NULL), MMP_RESULT_OK);
    CHECK_RC(mmp_device_start_heartbeat(b, NULL, NULL), MMP_RESULT_OK);
    st = status_of(b);
    CHECK(st.hostid == ID_B.hostid);
    CHECK(st.reason == MMP_REASON_TAKEN_OVER);
    CHECK(st.since_ms + 1000 >= before_ms && st.since_ms > since_a);
    CHECK_RC(mmp_device_release(b), MMP_RESULT_OK);
    st = status_of(b);
    CHECK(st.state == MMP_STATE_CLEAN);
    CHECK(st.reason == MMP_REASON_RELEASED);
    CHECK(!st.never_held);
    mmp_device_free(b);
}

struct canceller {
    struct mmp_device *dev;
    uint64_t after_ms;
};

static void *cancel_later(void *arg) {
    const struct canceller *k = arg;
    sleep_ms(k->after_ms);
    CHECK_RC(mmp_device_cancel(k->dev), MMP_RESULT_OK);
    return NULL;
}

static void test_cancel(const struct ctx *c) {
    format_device(c);
    struct mmp_device *a = open_as(c->dev, &ID_A, 0);
    struct mmp_device *b = open_as(c->dev, &ID_B, 0);
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_OK);
    CHECK_RC(mmp_device_start_heartbeat(a, NULL, NULL), MMP_RESULT_OK);
    /* A cancel from another thread stops the wait in flight within 50 ms (B's activity test
     * of A's live block would otherwise end in IN_USE only after a change is seen). */
    struct canceller k = {b, 30};
    pthread_t th;
    struct mmp_status owner;
    uint64_t t0 = now_ms();
    CHECK(pthread_create(&th, NULL, cancel_later, &k) == 0);
    mmp_result r = mmp_device_acquire(b, true, NULL, NULL);
    CHECK(pthread_join(th, NULL) == 0);
    /* The block may change before the cancel lands: then the refusal came first. */
    CHECK(r == MMP_RESULT_ABORTED || r == MMP_RESULT_IN_USE);
    CHECK(now_ms() - t0 < 1000);
    CHECK(pthread_create(&th, NULL, cancel_later, &k) == 0);
    r = mmp_device_check(b, NULL, NULL, &owner);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(r == MMP_RESULT_ABORTED || r == MMP_RESULT_IN_USE);
    CHECK(status_of(b).hostid == ID_A.hostid); /* nothing was written over A's block */
    /* A cancel while no call runs does nothing: the next call is not affected. */
    CHECK_RC(mmp_device_cancel(b), MMP_RESULT_OK);
    CHECK_RC(mmp_device_acquire(b, true, NULL, NULL), MMP_RESULT_IN_USE);
    CHECK_RC(mmp_device_release(a), MMP_RESULT_OK);
    mmp_device_free(a);
    mmp_device_free(b);
}

static void test_read_only(const struct ctx *c) {
    format_device(c);
    struct mmp_device *ro = open_as(c->dev, &ID_A, MMP_OPEN_READ_ONLY);
    CHECK(status_of(ro).state == MMP_STATE_CLEAN);
    struct mmp_status owner;
    CHECK_RC(mmp_device_check(ro, NULL, NULL, &owner), MMP_RESULT_OK);
    CHECK_RC(mmp_device_acquire(ro, false, NULL, NULL), MMP_RESULT_READ_ONLY);
    CHECK_RC(mmp_device_clear(ro), MMP_RESULT_READ_ONLY);
    mmp_device_free(ro);
}

static void test_hostid_and_identity(const struct ctx *c) {
    format_device(c);
    uint32_t h = 0;
    CHECK(setenv("MMP_HOSTID", "0x1234abcd", 1) == 0);
    CHECK_RC(mmp_hostid_get(&h), MMP_RESULT_OK);
    CHECK(h == 0x1234abcdu);

    /* A NULL identity acquires with the resolved hostid. */
    struct mmp_device *d = open_as(c->dev, NULL, 0);
    CHECK_RC(mmp_device_acquire(d, false, NULL, NULL), MMP_RESULT_OK);
    CHECK(status_of(d).hostid == 0x1234abcdu);
    CHECK_RC(mmp_device_release(d), MMP_RESULT_OK);
    mmp_device_free(d);

    h = 7;
    CHECK(setenv("MMP_HOSTID", "zz", 1) == 0);
    CHECK_RC(mmp_hostid_get(&h), MMP_RESULT_HOSTID_INVALID);
    CHECK(h == 7);
    d = open_as(c->dev, NULL, 0); /* reading needs no hostid */
    CHECK(status_of(d).state == MMP_STATE_CLEAN);
    CHECK_RC(mmp_device_acquire(d, false, NULL, NULL), MMP_RESULT_HOSTID_INVALID);
    mmp_device_free(d);

    CHECK(setenv("MMP_HOSTID", "0", 1) == 0);
    CHECK_RC(mmp_hostid_get(&h), MMP_RESULT_NO_HOSTID);
    CHECK(h == 7);
    struct mmp_status st;
    struct mmp_identity zero = {0, "node-zero", false};
    d = open_as(c->dev, &zero, 0);
    CHECK_RC(mmp_device_acquire(d, true, NULL, NULL), MMP_RESULT_NO_HOSTID);
    mmp_device_free(d);

    /* default_hostid: the resolved hostid with a node name of our own. */
    CHECK(setenv("MMP_HOSTID", "0x1234abcd", 1) == 0);
    struct mmp_identity node_only = {.nodename = "node-only", .default_hostid = true};
    d = open_as(c->dev, &node_only, 0);
    CHECK_RC(mmp_device_acquire(d, false, NULL, NULL), MMP_RESULT_OK);
    st = status_of(d);
    CHECK(st.hostid == 0x1234abcdu);
    CHECK(strcmp(st.nodename, "node-only") == 0);
    CHECK_RC(mmp_device_release(d), MMP_RESULT_OK);
    mmp_device_free(d);
    /* ... and `hostid` is ignored: a malformed $MMP_HOSTID is reported as for NULL. */
    CHECK(setenv("MMP_HOSTID", "zz", 1) == 0);
    node_only.hostid = 0x42u;
    d = open_as(c->dev, &node_only, 0);
    CHECK_RC(mmp_device_acquire(d, false, NULL, NULL), MMP_RESULT_HOSTID_INVALID);
    mmp_device_free(d);
    CHECK(setenv("MMP_HOSTID", "0", 1) == 0);

    /* Node names longer than 64 bytes are cut to 64. */
    char longname[100];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    struct mmp_identity lng = {0x42u, longname, false};
    d = open_as(c->dev, &lng, 0);
    CHECK_RC(mmp_device_acquire(d, false, NULL, NULL), MMP_RESULT_OK);
    st = status_of(d);
    CHECK(strlen(st.nodename) == 64);
    CHECK(strncmp(st.nodename, longname, 64) == 0);
    CHECK_RC(mmp_device_release(d), MMP_RESULT_OK);
    mmp_device_free(d);
}

/* Threads of this process (entries of /proc/self/task), not counting the kernel's io_uring
 * workers ("iou-*"), which come and go with the I/O. */
static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char path[300], comm[64] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            if (fgets(comm, sizeof comm, f) == NULL) {
                comm[0] = '\0';
            }
            fclose(f);
        }
        n += strncmp(comm, "iou-", 4) != 0;
    }
    closedir(d);
    return n;
}

/* How many of this process's descriptors point at a path containing `needle`. */
static int open_fds_matching(const char *needle) {
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char path[300], target[1024];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len > 0) {
            target[len] = '\0';
            n += strstr(target, needle) != NULL;
        }
    }
    closedir(d);
    return n;
}

/* A native area in a scratch file (interval INTERVAL_MS). */
static void make_area(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, 1 << 20) == 0);
    CHECK(close(fd) == 0);
    CHECK_RC(mmp_native_format(path, INTERVAL_MS, FAIL_INTERVALS, false), MMP_RESULT_OK);
}

static size_t file_size(const char *path) {
    struct stat st;
    CHECK(stat(path, &st) == 0);
    return (size_t)st.st_size;
}

/* Every handle of the process heartbeats on one shared engine: eight devices cost no more
 * threads than one. */
static void test_many_handles_one_engine(const struct ctx *c) {
    enum { N = 8 };
    char paths[N][512];
    struct mmp_device *devs[N];
    int with_one = 0;
    for (int i = 0; i < N; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/area%d.img", c->scratch, i);
        make_area(paths[i]);
        devs[i] = open_as(paths[i], &ID_A, 0);
        CHECK_RC(mmp_device_acquire(devs[i], false, NULL, NULL), MMP_RESULT_OK);
        CHECK_RC(mmp_device_start_heartbeat(devs[i], NULL, NULL), MMP_RESULT_OK);
        if (i == 0) {
            with_one = thread_count();
        }
    }
    sleep_ms(3 * INTERVAL_MS);
    int with_all = thread_count();
    printf("# threads: %d with one heartbeating handle, %d with %d\n", with_one, with_all, N);
    CHECK(with_all == with_one);
    for (int i = 0; i < N; i++) {
        CHECK(status_of(devs[i]).owned);
    }
    for (int i = 0; i < N; i++) {
        CHECK_RC(mmp_device_release(devs[i]), MMP_RESULT_OK);
        CHECK(status_of(devs[i]).state == MMP_STATE_CLEAN);
        mmp_device_free(devs[i]);
    }
    /* Released and freed: the library keeps none of the devices open (device-mapper, LVM
     * and loop refuse to remove a device someone holds open). */
    CHECK(open_fds_matching("/area") == 0);
}

/* The process-wide watchdog: refused without a heartbeating device or with a timeout longer
 * than the fail window; petted while heartbeats succeed; magic-closed on disarm. A regular
 * file stands in for /dev/watchdog (pets are '.', the magic close 'V'). */
static void test_watchdog(const struct ctx *c) {
    char wd[512];
    snprintf(wd, sizeof wd, "%s/watchdog.fake", c->scratch);
    FILE *f = fopen(wd, "w");
    CHECK(f != NULL);
    CHECK(fclose(f) == 0);
    mmp_self_fence fence = MMP_SELF_FENCE_DEGRADED;
    CHECK_RC(mmp_self_fence_state(&fence), MMP_RESULT_OK);
    CHECK(fence == MMP_SELF_FENCE_OFF);
    CHECK_RC(mmp_self_fence_state(NULL), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_watchdog_arm(NULL, 1), MMP_RESULT_NULL_PARAMETER);
    CHECK_RC(mmp_watchdog_disarm(), MMP_RESULT_NOT_ARMED);

    /* No device heartbeating: nothing to fence. */
    CHECK_RC(mmp_watchdog_arm(wd, 1), MMP_RESULT_NOT_HELD);

    format_device(c);
    struct mmp_device *a = open_as(c->dev, &ID_A, 0);
    CHECK_RC(mmp_device_acquire(a, false, NULL, NULL), MMP_RESULT_OK);
    CHECK_RC(mmp_device_start_heartbeat(a, NULL, NULL), MMP_RESULT_OK);
    /* A watchdog longer than the fail window (1 s: 100 ms x 10; 3 s in instrumented
     * builds) would fire after other hosts may have taken over. */
    unsigned too_long = (INTERVAL_MS * FAIL_INTERVALS) / 1000u + 1u;
    CHECK_RC(mmp_watchdog_arm(wd, too_long), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_watchdog_arm(wd, 0), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_watchdog_arm(wd, 1), MMP_RESULT_OK);
    CHECK_RC(mmp_watchdog_arm(wd, 1), MMP_RESULT_ALREADY_ARMED);
    CHECK_RC(mmp_self_fence_state(&fence), MMP_RESULT_OK);
    CHECK(fence == MMP_SELF_FENCE_ACTIVE);
    size_t before = file_size(wd);
    sleep_ms(5 * INTERVAL_MS);
    size_t after = file_size(wd);
    printf("# watchdog: %zu pets in %u ms\n", after - before, 5 * INTERVAL_MS);
    CHECK(after >= before + 3);
    CHECK_RC(mmp_watchdog_disarm(), MMP_RESULT_OK);
    CHECK_RC(mmp_self_fence_state(&fence), MMP_RESULT_OK);
    CHECK(fence == MMP_SELF_FENCE_OFF);
    f = fopen(wd, "r");
    CHECK(f != NULL);
    CHECK(fseek(f, -1, SEEK_END) == 0);
    CHECK(fgetc(f) == 'V');
    CHECK(fclose(f) == 0);
    CHECK_RC(mmp_watchdog_disarm(), MMP_RESULT_NOT_ARMED);
    CHECK_RC(mmp_device_release(a), MMP_RESULT_OK);
    mmp_device_free(a);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s DEVICE SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    struct ctx c = {argv[1], argv[2], 300};
    const char *bound = getenv("MMP_TEST_LOSS_BOUND_MS");
    if (bound != NULL) {
        c.loss_bound_ms = strtoull(bound, NULL, 10);
    }
    printf("# libmmp %s on %s\n", mmp_version(), c.dev);
    format_device(&c);
    RUN(test_version, &c);
    RUN(test_result_str, &c);
    RUN(test_null_parameters, &c);
    RUN(test_bad_devices, &c);
    RUN(test_status_and_check_clean, &c);
    RUN(test_acquire_heartbeat_release, &c);
    RUN(test_loss_by_second_handle, &c);
    RUN(test_loss_by_raw_write_and_corrupt_block, &c);
    RUN(test_crashed_holder_takeover, &c);
    RUN(test_cancel, &c);
    RUN(test_read_only, &c);
    RUN(test_hostid_and_identity, &c);
    RUN(test_many_handles_one_engine, &c);
    RUN(test_watchdog, &c);
    printf("all passed\n");
    return 0;
}
