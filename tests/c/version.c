/*
 * The version macros of mmp.h, including the derived MMP_VERSION_NUMBER, against the
 * version in Cargo.toml (passed by tests/it/c_api.rs as -DEXPECT_MAJOR=... and so on), and
 * against the library's mmp_version() at run time.
 */
#include <stdio.h>
#include <string.h>

#include <mmp.h>

#if !defined(EXPECT_MAJOR) || !defined(EXPECT_MINOR) || !defined(EXPECT_PATCH) ||          \
    !defined(EXPECT_NUMBER) || !defined(EXPECT_STRING)
#error "compile with -DEXPECT_MAJOR=.. -DEXPECT_MINOR=.. -DEXPECT_PATCH=.. -DEXPECT_NUMBER=.. -DEXPECT_STRING=.."
#endif

_Static_assert(MMP_VERSION_MAJOR == EXPECT_MAJOR, "MMP_VERSION_MAJOR differs from Cargo.toml");
_Static_assert(MMP_VERSION_MINOR == EXPECT_MINOR, "MMP_VERSION_MINOR differs from Cargo.toml");
_Static_assert(MMP_VERSION_PATCH == EXPECT_PATCH, "MMP_VERSION_PATCH differs from Cargo.toml");
_Static_assert(MMP_VERSION_NUMBER == EXPECT_NUMBER, "MMP_VERSION_NUMBER differs from Cargo.toml");

/* The derived macro orders versions: a later patch, minor or major is larger. */
_Static_assert(MMP_VERSION_NUMBER > ((EXPECT_MAJOR << 16) | (EXPECT_MINOR << 8)) - 1,
               "MMP_VERSION_NUMBER below its own MAJOR.MINOR.0");
_Static_assert(MMP_VERSION_NUMBER < ((EXPECT_MAJOR << 16) | ((EXPECT_MINOR + 1) << 8)),
               "MMP_VERSION_NUMBER reaches into the next minor version");

int main(void) {
    if (strcmp(mmp_version(), EXPECT_STRING) != 0) {
        fprintf(stderr, "mmp_version() is %s, Cargo.toml says %s\n", mmp_version(), EXPECT_STRING);
        return 1;
    }
    if (mmp_version_number() != MMP_VERSION_NUMBER) {
        fprintf(stderr, "mmp_version_number() is 0x%06x, the header's 0x%06x\n",
                (unsigned)mmp_version_number(), (unsigned)MMP_VERSION_NUMBER);
        return 1;
    }
    printf("libmmp %s, MMP_VERSION_NUMBER 0x%06x\n", mmp_version(), (unsigned)MMP_VERSION_NUMBER);
    return 0;
}
