/*
 * The ext4 administration calls on an unmounted ext4 image made by mke2fs without MMP:
 * enable, status of the new MMP block, set-interval (which proves the device unused with
 * the acquire protocol: about 11 s), check, disable.
 *
 * usage: ext4 IMAGE
 */
#define _GNU_SOURCE /* setenv */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <mmp.h>

#include "check.h"

static struct mmp_status status_at(const char *path) {
    struct mmp_device *d = NULL;
    CHECK_RC(mmp_device_open(path, NULL, MMP_OPEN_READ_ONLY, &d), MMP_RESULT_OK);
    struct mmp_status st;
    CHECK_RC(mmp_device_status(d, &st), MMP_RESULT_OK);
    struct mmp_status owner;
    CHECK_RC(mmp_device_check(d, NULL, NULL, &owner), MMP_RESULT_OK);
    CHECK(owner.state == MMP_STATE_CLEAN);
    mmp_device_free(d);
    return st;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
        return 2;
    }
    const char *img = argv[1];
    CHECK(setenv("MMP_HOSTID", "0x5151", 1) == 0);
    struct mmp_device *d = NULL;
    CHECK_RC(mmp_device_open(img, NULL, 0, &d), MMP_RESULT_NOT_MMP);
    CHECK_RC(mmp_ext4_set_interval(img, 7), MMP_RESULT_NOT_MMP);

    CHECK_RC(mmp_ext4_enable(img, 0), MMP_RESULT_INVALID_PARAMETER);
    CHECK_RC(mmp_ext4_enable(img, 5), MMP_RESULT_OK);
    CHECK_RC(mmp_ext4_enable(img, 5), MMP_RESULT_ALREADY_ENABLED);
    struct mmp_status st = status_at(img);
    CHECK(st.format == MMP_FORMAT_EXT4);
    CHECK(st.state == MMP_STATE_CLEAN);
    CHECK(!st.has_hostid);
    CHECK(st.interval_ms == 5000);
    /* The ext4 fields `mmp status --json` shows: the superblock's update interval, the
     * block's check interval (max(interval, 5) as enable writes it), where the block is. */
    CHECK(st.update_interval_s == 5);
    CHECK(st.check_interval_s == 5);
    CHECK(st.offset_bytes > 0 && st.offset_bytes % 1024 == 0);
    CHECK(st.reason == MMP_REASON_NONE && st.fail_intervals == 0 && st.delay_us == 0);
    CHECK(st.since_ms == 0);
    printf("ok - enable\n");

    uint64_t t0 = now_ms();
    CHECK_RC(mmp_ext4_set_interval(img, 7), MMP_RESULT_OK);
    printf("ok - set_interval (%llu ms)\n", (unsigned long long)(now_ms() - t0));
    st = status_at(img);
    CHECK(st.interval_ms == 7000);
    CHECK(st.update_interval_s == 7);
    CHECK(st.state == MMP_STATE_CLEAN);

    CHECK_RC(mmp_ext4_disable(img, true), MMP_RESULT_OK);
    CHECK_RC(mmp_device_open(img, NULL, 0, &d), MMP_RESULT_NOT_MMP);
    CHECK_RC(mmp_ext4_disable(img, true), MMP_RESULT_NOT_MMP);
    printf("ok - disable\n");
    printf("all passed\n");
    return 0;
}
