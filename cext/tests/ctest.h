/*
 * ctest.h - a minimal unit-test harness for the C core (no dependencies).
 *
 * Each cext/tests/test_*.c is one program: TEST(name) { ... CHECK(cond); ... } and a
 * main() that lists RUN(name) lines and ends with CTEST_END(). It prints
 * "N passed, N failed" and exits non-zero on any failure. tests/test_c_core.py builds
 * every such program with AddressSanitizer and UndefinedBehaviorSanitizer and runs it.
 */
#ifndef CTEST_H
#define CTEST_H

#include <math.h>
#include <stdio.h>

static int ctest_failed_checks;
static int ctest_passed;
static int ctest_failed;

#define TEST(name) static void name(void)

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            ctest_failed_checks++;                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                      \
    do {                                                                           \
        double ctest_a_ = (a), ctest_b_ = (b);                                     \
        if (!(fabs(ctest_a_ - ctest_b_) <= (tol))) {                               \
            ctest_failed_checks++;                                                 \
            fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g, tol %.3g\n", \
                    __FILE__, __LINE__, #a, ctest_a_, #b, ctest_b_, (double)(tol)); \
        }                                                                          \
    } while (0)

#define RUN(name)                                                                  \
    do {                                                                           \
        int ctest_before_ = ctest_failed_checks;                                   \
        name();                                                                    \
        if (ctest_failed_checks == ctest_before_) {                                \
            ctest_passed++;                                                        \
        } else {                                                                   \
            ctest_failed++;                                                        \
            fprintf(stderr, "FAILED: %s\n", #name);                                \
        }                                                                          \
    } while (0)

#define CTEST_END()                                                                \
    do {                                                                           \
        printf("%d passed, %d failed\n", ctest_passed, ctest_failed);              \
        return ctest_failed ? 1 : 0;                                               \
    } while (0)

#endif
