/*
 * test_thermocouple.c - NIST ITS-90 thermocouple functions (cext/thermocouple.c).
 *
 * Table values are from the printed NIST ITS-90 reference tables (NIST Monograph 175,
 * SRD 60), rounded there to 0.001 mV. Round trips sweep each type's whole range.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ctest.h"
#include "edge_core.h"

static const char TYPES[] = "BEJKNRST";

/* Lowest temperature the type B inverse answers with (EMF back at its 0 degC value). */
#define B_T_EMF_ZERO 42.13209965734812

typedef struct {
    char type;
    double t_c;
    double emf_mv;
} table_point;

/* A few printed NIST table values per type, including each range's ends. */
static const table_point TABLE[] = {
    {'B', 0.0, 0.000},     {'B', 21.0, -0.003},   {'B', 250.0, 0.291},  {'B', 630.0, 1.975},
    {'B', 631.0, 1.981},   {'B', 1000.0, 4.834},  {'B', 1820.0, 13.820},
    {'E', -270.0, -9.835}, {'E', -200.0, -8.825}, {'E', -10.0, -0.582}, {'E', 100.0, 6.319},
    {'E', 500.0, 37.005},  {'E', 1000.0, 76.373},
    {'J', -210.0, -8.095}, {'J', -100.0, -4.633}, {'J', 100.0, 5.269},  {'J', 760.0, 42.919},
    {'J', 761.0, 42.983},  {'J', 1200.0, 69.553},
    {'K', -270.0, -6.458}, {'K', -200.0, -5.891}, {'K', -50.0, -1.889}, {'K', 100.0, 4.096},
    {'K', 127.0, 5.206},   {'K', 300.0, 12.209},  {'K', 1000.0, 41.276}, {'K', 1372.0, 54.886},
    {'N', -270.0, -4.345}, {'N', -200.0, -3.990}, {'N', 100.0, 2.774},  {'N', 600.0, 20.613},
    {'N', 1300.0, 47.513},
    {'R', -50.0, -0.226},  {'R', 100.0, 0.647},   {'R', 1064.0, 11.361}, {'R', 1665.0, 19.746},
    {'R', 1768.0, 21.101},
    {'S', -50.0, -0.236},  {'S', 100.0, 0.646},   {'S', 1064.0, 10.332}, {'S', 1665.0, 17.542},
    {'S', 1768.0, 18.693},
    {'T', -270.0, -6.258}, {'T', -200.0, -5.603}, {'T', -50.0, -1.819}, {'T', 100.0, 4.279},
    {'T', 400.0, 20.872},
};

static double fwd(char type, double t)
{
    double e = NAN;
    int rc = ec_tc_celsius_to_emf(type, t, &e);
    return rc == EC_OK ? e : NAN;
}

static double inv(char type, double e)
{
    double t = NAN;
    int rc = ec_tc_emf_to_celsius(type, e, &t);
    return rc == EC_OK ? t : NAN;
}

/* Seebeck coefficient (mV/degC) by a central difference kept inside the range. */
static double seebeck(char type, double t)
{
    double t_min, t_max;
    ec_tc_range(type, &t_min, &t_max, NULL, NULL);
    double h = 1e-3;
    double a = t - h < t_min ? t_min : t - h;
    double b = t + h > t_max ? t_max : t + h;
    return (fwd(type, b) - fwd(type, a)) / (b - a);
}

TEST(table_values)
{
    for (size_t i = 0; i < sizeof TABLE / sizeof TABLE[0]; i++) {
        const table_point *p = &TABLE[i];
        double e = fwd(p->type, p->t_c);
        if (!(fabs(e - p->emf_mv) <= 0.0005 + 1e-9)) {
            fprintf(stderr, "type %c at %g degC: %.6f mV, table %.3f\n", p->type, p->t_c, e, p->emf_mv);
        }
        CHECK_NEAR(e, p->emf_mv, 0.0005 + 1e-9);
        if (p->type == 'B' && p->t_c < B_T_EMF_ZERO) {
            continue; /* below the type B inverse range */
        }
        /* A rounded table EMF at a range end may lie just outside the exact EMF range
         * (e.g. K 1372 degC: table 54.886, exact 54.8859..): clamp it, a shift within
         * the table's own rounding. */
        double e_min, e_max;
        ec_tc_range(p->type, NULL, NULL, &e_min, &e_max);
        double e_in = p->emf_mv < e_min ? e_min : (p->emf_mv > e_max ? e_max : p->emf_mv);
        CHECK(fabs(e_in - p->emf_mv) <= 0.0005 + 1e-9);
        double t = inv(p->type, e_in);
        double tol = 0.0005 / seebeck(p->type, p->t_c) + 0.002;
        CHECK_NEAR(t, p->t_c, tol);
    }
}

TEST(reference_function_exact_points)
{
    /* Values of the reference functions themselves (not the rounded tables). */
    CHECK_NEAR(fwd('K', 0.0), 0.0, 1e-15);
    CHECK_NEAR(fwd('B', 0.0), 0.0, 1e-15);
    /* Type K's exponential term matters: without it 127 degC would be ~0.12 mV low. */
    CHECK_NEAR(fwd('K', 127.0), 5.206, 0.0005);
    CHECK_NEAR(fwd('B', B_T_EMF_ZERO), 0.0, 1e-12);
    CHECK(fwd('B', 21.02) < -0.00258 && fwd('B', 21.02) > -0.00259);
}

/* Round trip t -> E -> t over [lo, hi] in `step`; returns the max |error| in degC. */
static double sweep_temperature(char type, double lo, double hi, double step)
{
    double worst = 0.0;
    long n = (long)((hi - lo) / step + 0.5);
    for (long i = 0; i <= n; i++) {
        double t = lo + (double)i * step;
        if (t > hi) {
            t = hi;
        }
        double e = fwd(type, t);
        double back = inv(type, e);
        double err = fabs(back - t);
        if (!(err <= 0.002)) {
            fprintf(stderr, "type %c: t %.6f -> %.9f mV -> %.9f\n", type, t, e, back);
            CHECK(err <= 0.002);
            return INFINITY;
        }
        if (err > worst) {
            worst = err;
        }
    }
    return worst;
}

TEST(round_trip_temperature_whole_range)
{
    for (const char *p = TYPES; *p; p++) {
        double t_min, t_max;
        CHECK(ec_tc_range(*p, &t_min, &t_max, NULL, NULL) == EC_OK);
        double lo = *p == 'B' ? B_T_EMF_ZERO : t_min;
        double worst = sweep_temperature(*p, lo, t_max, 0.01);
        printf("type %c: max |t - inverse(forward(t))| = %.3g degC\n", *p, worst);
        CHECK(worst <= 1e-6); /* the aim; the contract is 0.002 */
    }
}

/* Temperatures a few ulps to a few micro-degrees inside each end: the polynomials'
 * rounding noise there must not push their EMF out of the inverse's range. */
TEST(round_trip_at_range_ends)
{
    for (const char *p = TYPES; *p; p++) {
        double t_min, t_max;
        ec_tc_range(*p, &t_min, &t_max, NULL, NULL);
        double ends[2] = {*p == 'B' ? B_T_EMF_ZERO : t_min, t_max};
        for (int side = 0; side < 2; side++) {
            double dir = side == 0 ? INFINITY : -INFINITY;
            double t = ends[side];
            for (int i = 0; i < 2000; i++) {
                double e = fwd(*p, t);
                double back = inv(*p, e);
                if (!(fabs(back - t) <= 1e-5)) {
                    fprintf(stderr, "type %c near %g: t %.17g -> %.17g mV -> %.17g\n", *p, ends[side], t, e,
                            back);
                    CHECK(fabs(back - t) <= 1e-5);
                    break;
                }
                t = i < 1000 ? nextafter(t, dir) : t + (side == 0 ? 1e-9 : -1e-9);
            }
        }
    }
}

TEST(round_trip_emf_whole_range)
{
    for (const char *p = TYPES; *p; p++) {
        double e_min, e_max;
        CHECK(ec_tc_range(*p, NULL, NULL, &e_min, &e_max) == EC_OK);
        const long n = 40000;
        double worst = 0.0;
        for (long i = 0; i <= n; i++) {
            double e = e_min + (e_max - e_min) * (double)i / (double)n;
            if (e > e_max) {
                e = e_max;
            }
            double t = inv(*p, e);
            CHECK(!isnan(t));
            double err_c = fabs(fwd(*p, t) - e) / seebeck(*p, t);
            if (err_c > worst) {
                worst = err_c;
            }
        }
        printf("type %c: max |forward(inverse(E)) - E| / S = %.3g degC\n", *p, worst);
        CHECK(worst <= 0.002);
        CHECK(worst <= 1e-5);
    }
}

TEST(range_ends_and_out_of_range)
{
    for (const char *p = TYPES; *p; p++) {
        double t_min, t_max, e_min, e_max, out = 0.0;
        CHECK(ec_tc_range(*p, &t_min, &t_max, &e_min, &e_max) == EC_OK);
        CHECK(t_min < t_max && e_min < e_max);
        CHECK(ec_tc_celsius_to_emf(*p, t_min, &out) == EC_OK);
        CHECK_NEAR(out, e_min, 1e-12);
        CHECK(ec_tc_celsius_to_emf(*p, t_max, &out) == EC_OK);
        CHECK_NEAR(out, e_max, 1e-12);
        CHECK(ec_tc_celsius_to_emf(*p, nextafter(t_min, -INFINITY), &out) == EC_ERANGE);
        CHECK(ec_tc_celsius_to_emf(*p, nextafter(t_max, INFINITY), &out) == EC_ERANGE);
        CHECK(ec_tc_celsius_to_emf(*p, NAN, &out) == EC_ERANGE);
        CHECK(ec_tc_celsius_to_emf(*p, INFINITY, &out) == EC_ERANGE);
        CHECK(ec_tc_celsius_to_emf(*p, -INFINITY, &out) == EC_ERANGE);
        CHECK(ec_tc_emf_to_celsius(*p, e_min, &out) == EC_OK);
        CHECK_NEAR(out, *p == 'B' ? B_T_EMF_ZERO : t_min, 1e-6);
        CHECK(ec_tc_emf_to_celsius(*p, e_max, &out) == EC_OK);
        CHECK_NEAR(out, t_max, 1e-6);
        /* Within 1e-9 mV of an end: answered with that end (rounding-noise slack). */
        CHECK(ec_tc_emf_to_celsius(*p, e_min - 5e-10, &out) == EC_OK);
        CHECK_NEAR(out, *p == 'B' ? B_T_EMF_ZERO : t_min, 1e-5);
        CHECK(ec_tc_emf_to_celsius(*p, e_max + 5e-10, &out) == EC_OK);
        CHECK_NEAR(out, t_max, 1e-5);
        CHECK(ec_tc_emf_to_celsius(*p, e_min - 2e-9, &out) == EC_ERANGE);
        CHECK(ec_tc_emf_to_celsius(*p, e_max + 2e-9, &out) == EC_ERANGE);
        CHECK(ec_tc_emf_to_celsius(*p, e_min - 1e-6, &out) == EC_ERANGE);
        CHECK(ec_tc_emf_to_celsius(*p, e_max + 1e-6, &out) == EC_ERANGE);
        CHECK(ec_tc_emf_to_celsius(*p, NAN, &out) == EC_ERANGE);
        CHECK(ec_tc_emf_to_celsius(*p, INFINITY, &out) == EC_ERANGE);
        CHECK(ec_tc_emf_to_celsius(*p, -INFINITY, &out) == EC_ERANGE);
    }
    double lo, hi, elo, ehi;
    CHECK(ec_tc_range('K', &lo, &hi, &elo, &ehi) == EC_OK);
    CHECK(lo == -270.0 && hi == 1372.0);
    CHECK_NEAR(elo, -6.458, 0.0005);
    CHECK_NEAR(ehi, 54.886, 0.0005);
    CHECK(ec_tc_range('B', &lo, &hi, &elo, &ehi) == EC_OK);
    CHECK(lo == 0.0 && hi == 1820.0 && elo == 0.0);
    CHECK_NEAR(ehi, 13.820, 0.0005);
    CHECK(ec_tc_range('R', &lo, &hi, NULL, NULL) == EC_OK);
    CHECK(lo == -50.0 && hi == 1768.1);
    CHECK(ec_tc_range('T', NULL, NULL, NULL, NULL) == EC_OK);
}

TEST(type_b_low_end)
{
    double t = 0.0;
    /* The B minimum: these EMFs are below the accepted inverse range. */
    CHECK(ec_tc_emf_to_celsius('B', -0.001, &t) == EC_ERANGE);
    CHECK(ec_tc_emf_to_celsius('B', -0.0025, &t) == EC_ERANGE);
    /* 0 mV answers with the upper root, not 0 degC. */
    CHECK(ec_tc_emf_to_celsius('B', 0.0, &t) == EC_OK);
    CHECK_NEAR(t, B_T_EMF_ZERO, 1e-6);
    /* The forward function still covers 0..1820 degC. */
    double e = 1.0;
    CHECK(ec_tc_celsius_to_emf('B', 10.0, &e) == EC_OK);
    CHECK(e < 0.0);
    /* Just above 0 mV: unique, slightly above the zero crossing. */
    CHECK(ec_tc_emf_to_celsius('B', 0.001, &t) == EC_OK);
    CHECK(t > B_T_EMF_ZERO && t < 50.0);
    CHECK_NEAR(fwd('B', t), 0.001, 1e-12);
    /* Monotonic over the whole inverse range. */
    double prev = fwd('B', B_T_EMF_ZERO);
    for (double x = B_T_EMF_ZERO + 0.01; x <= 1820.0; x += 0.01) {
        double cur = fwd('B', x);
        if (!(cur > prev)) {
            CHECK(cur > prev);
            break;
        }
        prev = cur;
    }
}

TEST(segment_joints_continuous)
{
    static const struct {
        char type;
        double t;
    } joints[] = {{'B', 630.615}, {'E', 0.0},     {'J', 760.0},  {'K', 0.0},  {'N', 0.0},
                  {'R', 1064.18}, {'R', 1664.5},  {'S', 1064.18}, {'S', 1664.5}, {'T', 0.0}};
    for (size_t i = 0; i < sizeof joints / sizeof joints[0]; i++) {
        double a = fwd(joints[i].type, joints[i].t);
        double b = fwd(joints[i].type, nextafter(joints[i].t, INFINITY));
        CHECK_NEAR(a, b, 1e-7);
        /* And the inverse lands on the joint from both sides. */
        CHECK_NEAR(inv(joints[i].type, a), joints[i].t, 1e-5);
        CHECK_NEAR(inv(joints[i].type, b), joints[i].t, 1e-5);
    }
}

TEST(type_letters)
{
    double a = 0.0, b = 0.0;
    for (const char *p = TYPES; *p; p++) {
        char lower = (char)(*p - 'A' + 'a');
        CHECK(ec_tc_celsius_to_emf(*p, 300.0, &a) == EC_OK);
        CHECK(ec_tc_celsius_to_emf(lower, 300.0, &b) == EC_OK);
        CHECK(a == b);
        CHECK(ec_tc_range(lower, NULL, NULL, NULL, NULL) == EC_OK);
    }
    const char bad[] = {'A', 'C', 'X', 'Z', 'k' + 1, '\0', '1', ' '};
    for (size_t i = 0; i < sizeof bad; i++) {
        double out = 0.0;
        uint8_t st = 0;
        double in = 1.0;
        CHECK(ec_tc_celsius_to_emf(bad[i], 100.0, &out) == EC_EINVAL);
        CHECK(ec_tc_emf_to_celsius(bad[i], 1.0, &out) == EC_EINVAL);
        CHECK(ec_tc_compensated(bad[i], 1.0, 25.0, &out) == EC_EINVAL);
        CHECK(ec_tc_range(bad[i], &out, NULL, NULL, NULL) == EC_EINVAL);
        CHECK(ec_tc_celsius_to_emf_batch(bad[i], &in, &out, &st, 1) == EC_EINVAL);
        CHECK(ec_tc_emf_to_celsius_batch(bad[i], &in, 0.0, &out, &st, 1) == EC_EINVAL);
        CHECK(ec_tc_celsius_to_emf_batch(bad[i], &in, &out, &st, 0) == EC_EINVAL);
    }
}

TEST(null_pointers)
{
    double in = 1.0, out = 0.0;
    uint8_t st = 0;
    CHECK(ec_tc_celsius_to_emf('K', 100.0, NULL) == EC_EINVAL);
    CHECK(ec_tc_emf_to_celsius('K', 1.0, NULL) == EC_EINVAL);
    CHECK(ec_tc_compensated('K', 1.0, 25.0, NULL) == EC_EINVAL);
    CHECK(ec_tc_celsius_to_emf_batch('K', NULL, &out, &st, 1) == EC_EINVAL);
    CHECK(ec_tc_celsius_to_emf_batch('K', &in, NULL, &st, 1) == EC_EINVAL);
    CHECK(ec_tc_celsius_to_emf_batch('K', &in, &out, NULL, 1) == EC_EINVAL);
    CHECK(ec_tc_emf_to_celsius_batch('K', NULL, 0.0, &out, &st, 1) == EC_EINVAL);
    CHECK(ec_tc_emf_to_celsius_batch('K', &in, 0.0, NULL, &st, 1) == EC_EINVAL);
    CHECK(ec_tc_emf_to_celsius_batch('K', &in, 0.0, &out, NULL, 1) == EC_EINVAL);
    /* n == 0 is a no-op, whatever the pointers. */
    CHECK(ec_tc_celsius_to_emf_batch('K', NULL, NULL, NULL, 0) == EC_OK);
    CHECK(ec_tc_emf_to_celsius_batch('K', NULL, 0.0, NULL, NULL, 0) == EC_OK);
    CHECK(ec_tc_celsius_to_emf_batch('K', &in, &out, &st, 0) == EC_OK);
    CHECK(out == 0.0);
}

TEST(compensated)
{
    double t = 0.0;
    /* K, hot junction 300 degC, cold junction 25 degC: meter sees E(300) - E(25). */
    double e = fwd('K', 300.0) - fwd('K', 25.0);
    CHECK(ec_tc_compensated('K', e, 25.0, &t) == EC_OK);
    CHECK_NEAR(t, 300.0, 1e-8);
    /* Cold junction at 0 degC equals the plain inverse. */
    CHECK(ec_tc_compensated('J', 10.0, 0.0, &t) == EC_OK);
    CHECK_NEAR(t, inv('J', 10.0), 1e-12);
    /* Negative measured EMF: hot junction colder than the cold junction. */
    e = fwd('T', -100.0) - fwd('T', 20.0);
    CHECK(ec_tc_compensated('T', e, 20.0, &t) == EC_OK);
    CHECK_NEAR(t, -100.0, 1e-8);
    /* Type B with a warm cold junction. */
    e = fwd('B', 1200.0) - fwd('B', 30.0);
    CHECK(ec_tc_compensated('B', e, 30.0, &t) == EC_OK);
    CHECK_NEAR(t, 1200.0, 1e-8);
    /* Out of range: the cold junction itself, or the sum. */
    CHECK(ec_tc_compensated('K', 1.0, 2000.0, &t) == EC_ERANGE);
    CHECK(ec_tc_compensated('K', 1.0, NAN, &t) == EC_ERANGE);
    CHECK(ec_tc_compensated('K', 54.886, 25.0, &t) == EC_ERANGE);
    CHECK(ec_tc_compensated('K', NAN, 25.0, &t) == EC_ERANGE);
    CHECK(ec_tc_compensated('R', 0.0, -60.0, &t) == EC_ERANGE);
}

TEST(batch_forward)
{
    double in[] = {-300.0, -270.0, -100.0, 0.0, 25.5, 1372.0, 1372.5, NAN, INFINITY, 500.0};
    enum { N = sizeof in / sizeof in[0] };
    double out[N];
    uint8_t st[N];
    CHECK(ec_tc_celsius_to_emf_batch('k', in, out, st, N) == EC_OK);
    for (int i = 0; i < N; i++) {
        double e = 0.0;
        int rc = ec_tc_celsius_to_emf('K', in[i], &e);
        if (rc == EC_OK) {
            CHECK(st[i] == EC_ST_OK);
            CHECK(out[i] == e);
        } else {
            CHECK(rc == EC_ERANGE);
            CHECK(st[i] == EC_ST_RANGE);
            CHECK(isnan(out[i]));
        }
    }
    CHECK(st[0] == EC_ST_RANGE && st[1] == EC_ST_OK && st[6] == EC_ST_RANGE && st[7] == EC_ST_RANGE);
}

TEST(batch_inverse)
{
    for (const char *p = TYPES; *p; p++) {
        double e_min, e_max;
        ec_tc_range(*p, NULL, NULL, &e_min, &e_max);
        enum { N = 1000 };
        double in[N + 4], out[N + 4];
        uint8_t st[N + 4];
        for (int i = 0; i < N; i++) {
            in[i] = e_min + (e_max - e_min) * i / (N - 1.0);
        }
        in[N] = e_max + 0.01;
        in[N + 1] = e_min - 0.01;
        in[N + 2] = NAN;
        in[N + 3] = -INFINITY;
        CHECK(ec_tc_emf_to_celsius_batch(*p, in, 0.0, out, st, N + 4) == EC_OK);
        for (int i = 0; i < N; i++) {
            CHECK(st[i] == EC_ST_OK);
            CHECK(out[i] == inv(*p, in[i]));
        }
        for (int i = N; i < N + 4; i++) {
            CHECK(st[i] == EC_ST_RANGE);
            CHECK(isnan(out[i]));
        }
    }
    /* With a cold junction: equals the scalar compensated call. */
    double in[] = {-1.0, 0.0, 4.0, 40.0, 60.0};
    double out[5];
    uint8_t st[5];
    CHECK(ec_tc_emf_to_celsius_batch('K', in, 23.5, out, st, 5) == EC_OK);
    for (int i = 0; i < 5; i++) {
        double t = 0.0;
        int rc = ec_tc_compensated('K', in[i], 23.5, &t);
        CHECK((rc == EC_OK) == (st[i] == EC_ST_OK));
        if (rc == EC_OK) {
            CHECK(out[i] == t);
        } else {
            CHECK(isnan(out[i]));
        }
    }
    CHECK(st[4] == EC_ST_RANGE);
    /* A cold junction out of range marks every entry. */
    CHECK(ec_tc_emf_to_celsius_batch('K', in, 5000.0, out, st, 5) == EC_OK);
    for (int i = 0; i < 5; i++) {
        CHECK(st[i] == EC_ST_RANGE && isnan(out[i]));
    }
}

int main(void)
{
    RUN(table_values);
    RUN(reference_function_exact_points);
    RUN(round_trip_temperature_whole_range);
    RUN(round_trip_at_range_ends);
    RUN(round_trip_emf_whole_range);
    RUN(range_ends_and_out_of_range);
    RUN(type_b_low_end);
    RUN(segment_joints_continuous);
    RUN(type_letters);
    RUN(null_pointers);
    RUN(compensated);
    RUN(batch_forward);
    RUN(batch_inverse);
    CTEST_END();
}
