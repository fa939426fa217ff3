/*
 * Tiny assertion and timing helpers shared by the C test programs. A failed check prints
 * where and why, then exits 1; the Rust driver (tests/it/c_api.rs) shows the output.
 */
#ifndef MMP_TEST_CHECK_H
#define MMP_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <mmp.h>

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: in %s: CHECK(%s) failed\n", __FILE__, __LINE__,        \
                    __func__, #cond);                                                      \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

/* Checks that a call returns `want`, naming both results on failure. */
#define CHECK_RC(call, want)                                                               \
    do {                                                                                   \
        mmp_result got_ = (call);                                                          \
        mmp_result want_ = (want);                                                         \
        if (got_ != want_) {                                                               \
            fprintf(stderr, "%s:%d: in %s: %s returned %u (%s), expected %s (%u)\n",       \
                    __FILE__, __LINE__, __func__, #call, (unsigned)got_,                   \
                    mmp_result_str(got_), #want, (unsigned)want_);                         \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

static inline uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline void sleep_ms(uint64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

#define RUN(test, ...)                                                                     \
    do {                                                                                   \
        uint64_t t0_ = now_ms();                                                           \
        test(__VA_ARGS__);                                                                 \
        printf("ok - %s (%llu ms)\n", #test, (unsigned long long)(now_ms() - t0_));        \
        fflush(stdout);                                                                    \
    } while (0)

#endif /* MMP_TEST_CHECK_H */
