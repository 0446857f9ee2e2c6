/*
 * thermocouple.c - NIST ITS-90 thermocouple reference functions, types B E J K N R S T.
 *
 * Source of every coefficient below: NIST Monograph 175 (Burns et al., 1993),
 * "Temperature-Electromotive Force Reference Functions and Tables for the
 * Letter-Designated Thermocouple Types Based on the ITS-90", as distributed in the
 * NIST ITS-90 Thermocouple Database, NIST Standard Reference Database 60 (the
 * coefficient file allcoeff.tab). Units: degC and mV, reference junction at 0 degC.
 *
 * Forward (degC -> mV) evaluates the published reference function of the segment that
 * holds t; a temperature exactly on a segment boundary uses the lower segment (the
 * published ranges are written "lo to hi"). Type K above 0 degC adds the published
 * term a0 * exp(a1 * (t - a2)^2).
 *
 * Inverse (mV -> degC) is not NIST's approximate inverse polynomial, whose published
 * error is up to +-0.06 degC. That polynomial only seeds the search: the answer is the
 * root of (forward(t) - E) found by Newton's method on the exact reference function,
 * with its analytic derivative, kept inside the bracket of the forward segment that
 * holds the root (a bisection step whenever Newton would leave it). Where NIST
 * publishes no inverse polynomial (below -200 degC for E K N T, type B below 250 degC,
 * the last 0.001 mV of a rounded published span) the seed comes from bisection on the
 * forward function. The result matches the reference function to better than 1e-7 degC
 * (1e-9 typically; the worst is near -270 degC, where the polynomials are flattest).
 *
 * Type B: its EMF falls from 0 at 0 degC to a minimum of about -0.0026 mV near 21 degC
 * and climbs back to 0 at T_B_EMF_ZERO (about 42.13 degC), so an EMF between
 * -0.0026 and 0 mV names two temperatures. The inverse of type B therefore accepts
 * only EMFs from 0 mV (its 0 degC value) up to forward(1820 degC), and answers with
 * the one temperature in [T_B_EMF_ZERO, 1820] degC. Every EMF above 0 mV then has
 * exactly one temperature in the whole published range 0..1820 degC. The forward
 * function of type B still accepts 0..1820 degC. ec_tc_range reports, for every type,
 * the forward temperature range and the EMF range the inverse accepts; for type B the
 * latter is [0, forward(1820)] = [forward(0), forward(1820)] like for every other type,
 * only its inverse answers are >= T_B_EMF_ZERO.
 *
 * Range ends: the reference polynomials, evaluated in double precision, wobble by up
 * to ~2e-11 mV near their range ends (large terms cancelling, e.g. type T at -270 degC,
 * type B at 1820 degC), so forward(t) for a t just inside the range can land a hair
 * outside [forward(t_min), forward(t_max)]. The inverse therefore accepts EMFs up to
 * TC_EMF_SLACK (1e-9 mV, far below any measurement; at most ~4e-6 degC even where the
 * Seebeck coefficient is smallest) beyond either end and answers with that end's
 * temperature. Anything further out is EC_ERANGE.
 *
 * Plain C11, no allocation, no mutable globals: safe to call from any thread.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "edge_core.h"

#define TC_MAX_FWD_SEGS 3
#define TC_MAX_FWD_COEF 15
#define TC_MAX_INV_SEGS 4
#define TC_MAX_INV_COEF 11

/* Temperature above the type B minimum where its EMF is back at its 0 degC value (0 mV).
 * Root of the 0..630.615 degC reference function, found once by exact rational
 * bisection on the published coefficients; the unit tests check forward() ~ 0 here. */
#define T_B_EMF_ZERO 42.13209965734812

typedef struct {
    double t_lo, t_hi;            /* segment range, degC */
    int n;                        /* number of coefficients c0..c(n-1) */
    double c[TC_MAX_FWD_COEF];
    int has_exp;                  /* type K above 0 degC */
} tc_fwd_seg;

typedef struct {
    double e_lo, e_hi;            /* published EMF span of the polynomial, mV */
    int n;                        /* number of coefficients d0..d(n-1) */
    double d[TC_MAX_INV_COEF];
} tc_inv_seg;

typedef struct {
    char letter;
    double t_min, t_max;          /* forward range, degC */
    double t_inv_min;             /* lowest temperature the inverse answers with */
    int n_fwd;
    tc_fwd_seg fwd[TC_MAX_FWD_SEGS];
    int n_inv;
    tc_inv_seg inv[TC_MAX_INV_SEGS];
} tc_type_def;

/* Type K exponential term, E += K_A0 * exp(K_A1 * (t - K_A2)^2) for t > 0. */
static const double K_A0 = 0.118597600000E+00;
static const double K_A1 = -0.118343200000E-03;
static const double K_A2 = 0.126968600000E+03;

static const tc_type_def TC_TYPES[] = {
    {
        'B', 0.0, 1820.0, T_B_EMF_ZERO,
        2,
        {
            {0.0, 630.615, 7,
             {0.000000000000E+00, -0.246508183460E-03, 0.590404211710E-05, -0.132579316360E-08,
              0.156682919010E-11, -0.169445292400E-14, 0.629903470940E-18},
             0},
            {630.615, 1820.0, 9,
             {-0.389381686210E+01, 0.285717474700E-01, -0.848851047850E-04, 0.157852801640E-06,
              -0.168353448640E-09, 0.111097940130E-12, -0.445154310330E-16, 0.989756408210E-20,
              -0.937913302890E-24},
             0},
        },
        2,
        {
            {0.291, 2.431, 9,
             {9.8423321E+01, 6.9971500E+02, -8.4765304E+02, 1.0052644E+03, -8.3345952E+02,
              4.5508542E+02, -1.5523037E+02, 2.9886750E+01, -2.4742860E+00}},
            {2.431, 13.820, 9,
             {2.1315071E+02, 2.8510504E+02, -5.2742887E+01, 9.9160804E+00, -1.2965303E+00,
              1.1195870E-01, -6.0625199E-03, 1.8661696E-04, -2.4878585E-06}},
        },
    },
    {
        'E', -270.0, 1000.0, -270.0,
        2,
        {
            {-270.0, 0.0, 14,
             {0.000000000000E+00, 0.586655087080E-01, 0.454109771240E-04, -0.779980486860E-06,
              -0.258001608430E-07, -0.594525830570E-09, -0.932140586670E-11, -0.102876055340E-12,
              -0.803701236210E-15, -0.439794973910E-17, -0.164147763550E-19, -0.396736195160E-22,
              -0.558273287210E-25, -0.346578420130E-28},
             0},
            {0.0, 1000.0, 11,
             {0.000000000000E+00, 0.586655087100E-01, 0.450322755820E-04, 0.289084072120E-07,
              -0.330568966520E-09, 0.650244032700E-12, -0.191974955040E-15, -0.125366004970E-17,
              0.214892175690E-20, -0.143880417820E-23, 0.359608994810E-27},
             0},
        },
        2,
        {
            {-8.825, 0.0, 9,
             {0.0000000E+00, 1.6977288E+01, -4.3514970E-01, -1.5859697E-01, -9.2502871E-02,
              -2.6084314E-02, -4.1360199E-03, -3.4034030E-04, -1.1564890E-05}},
            {0.0, 76.373, 10,
             {0.0000000E+00, 1.7057035E+01, -2.3301759E-01, 6.5435585E-03, -7.3562749E-05,
              -1.7896001E-06, 8.4036165E-08, -1.3735879E-09, 1.0629823E-11, -3.2447087E-14}},
        },
    },
    {
        'J', -210.0, 1200.0, -210.0,
        2,
        {
            {-210.0, 760.0, 9,
             {0.000000000000E+00, 0.503811878150E-01, 0.304758369300E-04, -0.856810657200E-07,
              0.132281952950E-09, -0.170529583370E-12, 0.209480906970E-15, -0.125383953360E-18,
              0.156317256970E-22},
             0},
            {760.0, 1200.0, 6,
             {0.296456256810E+03, -0.149761277860E+01, 0.317871039240E-02, -0.318476867010E-05,
              0.157208190040E-08, -0.306913690560E-12},
             0},
        },
        3,
        {
            {-8.095, 0.0, 9,
             {0.0000000E+00, 1.9528268E+01, -1.2286185E+00, -1.0752178E+00, -5.9086933E-01,
              -1.7256713E-01, -2.8131513E-02, -2.3963370E-03, -8.3823321E-05}},
            {0.0, 42.919, 8,
             {0.000000E+00, 1.978425E+01, -2.001204E-01, 1.036969E-02, -2.549687E-04,
              3.585153E-06, -5.344285E-08, 5.099890E-10}},
            {42.919, 69.553, 6,
             {-3.11358187E+03, 3.00543684E+02, -9.94773230E+00, 1.70276630E-01, -1.43033468E-03,
              4.73886084E-06}},
        },
    },
    {
        'K', -270.0, 1372.0, -270.0,
        2,
        {
            {-270.0, 0.0, 11,
             {0.000000000000E+00, 0.394501280250E-01, 0.236223735980E-04, -0.328589067840E-06,
              -0.499048287770E-08, -0.675090591730E-10, -0.574103274280E-12, -0.310888728940E-14,
              -0.104516093650E-16, -0.198892668780E-19, -0.163226974860E-22},
             0},
            {0.0, 1372.0, 10,
             {-0.176004136860E-01, 0.389212049750E-01, 0.185587700320E-04, -0.994575928740E-07,
              0.318409457190E-09, -0.560728448890E-12, 0.560750590590E-15, -0.320207200030E-18,
              0.971511471520E-22, -0.121047212750E-25},
             1},
        },
        3,
        {
            {-5.891, 0.0, 9,
             {0.0000000E+00, 2.5173462E+01, -1.1662878E+00, -1.0833638E+00, -8.9773540E-01,
              -3.7342377E-01, -8.6632643E-02, -1.0450598E-02, -5.1920577E-04}},
            {0.0, 20.644, 10,
             {0.000000E+00, 2.508355E+01, 7.860106E-02, -2.503131E-01, 8.315270E-02,
              -1.228034E-02, 9.804036E-04, -4.413030E-05, 1.057734E-06, -1.052755E-08}},
            {20.644, 54.886, 7,
             {-1.318058E+02, 4.830222E+01, -1.646031E+00, 5.464731E-02, -9.650715E-04,
              8.802193E-06, -3.110810E-08}},
        },
    },
    {
        'N', -270.0, 1300.0, -270.0,
        2,
        {
            {-270.0, 0.0, 9,
             {0.000000000000E+00, 0.261591059620E-01, 0.109574842280E-04, -0.938411115540E-07,
              -0.464120397590E-10, -0.263033577160E-11, -0.226534380030E-13, -0.760893007910E-16,
              -0.934196678350E-19},
             0},
            {0.0, 1300.0, 11,
             {0.000000000000E+00, 0.259293946010E-01, 0.157101418800E-04, 0.438256272370E-07,
              -0.252611697940E-09, 0.643118193390E-12, -0.100634715190E-14, 0.997453389920E-18,
              -0.608632456070E-21, 0.208492293390E-24, -0.306821961510E-28},
             0},
        },
        3,
        {
            {-3.990, 0.0, 10,
             {0.0000000E+00, 3.8436847E+01, 1.1010485E+00, 5.2229312E+00, 7.2060525E+00,
              5.8488586E+00, 2.7754916E+00, 7.7075166E-01, 1.1582665E-01, 7.3138868E-03}},
            {0.0, 20.613, 8,
             {0.00000E+00, 3.86896E+01, -1.08267E+00, 4.70205E-02, -2.12169E-06, -1.17272E-04,
              5.39280E-06, -7.98156E-08}},
            {20.613, 47.513, 6,
             {1.972485E+01, 3.300943E+01, -3.915159E-01, 9.855391E-03, -1.274371E-04,
              7.767022E-07}},
        },
    },
    {
        'R', -50.0, 1768.1, -50.0,
        3,
        {
            {-50.0, 1064.18, 10,
             {0.000000000000E+00, 0.528961729765E-02, 0.139166589782E-04, -0.238855693017E-07,
              0.356916001063E-10, -0.462347666298E-13, 0.500777441034E-16, -0.373105886191E-19,
              0.157716482367E-22, -0.281038625251E-26},
             0},
            {1064.18, 1664.5, 6,
             {0.295157925316E+01, -0.252061251332E-02, 0.159564501865E-04, -0.764085947576E-08,
              0.205305291024E-11, -0.293359668173E-15},
             0},
            {1664.5, 1768.1, 5,
             {0.152232118209E+03, -0.268819888545E+00, 0.171280280471E-03, -0.345895706453E-07,
              -0.934633971046E-14},
             0},
        },
        4,
        {
            {-0.226, 1.923, 11,
             {0.0000000E+00, 1.8891380E+02, -9.3835290E+01, 1.3068619E+02, -2.2703580E+02,
              3.5145659E+02, -3.8953900E+02, 2.8239471E+02, -1.2607281E+02, 3.1353611E+01,
              -3.3187769E+00}},
            {1.923, 13.228, 10,
             {1.334584505E+01, 1.472644573E+02, -1.844024844E+01, 4.031129726E+00,
              -6.249428360E-01, 6.468412046E-02, -4.458750426E-03, 1.994710149E-04,
              -5.313401790E-06, 6.481976217E-08}},
            {11.361, 19.739, 6,
             {-8.199599416E+01, 1.553962042E+02, -8.342197663E+00, 4.279433549E-01,
              -1.191577910E-02, 1.492290091E-04}},
            {19.739, 21.103, 5,
             {3.406177836E+04, -7.023729171E+03, 5.582903813E+02, -1.952394635E+01,
              2.560740231E-01}},
        },
    },
    {
        'S', -50.0, 1768.1, -50.0,
        3,
        {
            {-50.0, 1064.18, 9,
             {0.000000000000E+00, 0.540313308631E-02, 0.125934289740E-04, -0.232477968689E-07,
              0.322028823036E-10, -0.331465196389E-13, 0.255744251786E-16, -0.125068871393E-19,
              0.271443176145E-23},
             0},
            {1064.18, 1664.5, 5,
             {0.132900444085E+01, 0.334509311344E-02, 0.654805192818E-05, -0.164856259209E-08,
              0.129989605174E-13},
             0},
            {1664.5, 1768.1, 5,
             {0.146628232636E+03, -0.258430516752E+00, 0.163693574641E-03, -0.330439046987E-07,
              -0.943223690612E-14},
             0},
        },
        4,
        {
            {-0.235, 1.874, 10,
             {0.00000000E+00, 1.84949460E+02, -8.00504062E+01, 1.02237430E+02, -1.52248592E+02,
              1.88821343E+02, -1.59085941E+02, 8.23027880E+01, -2.34181944E+01, 2.79786260E+00}},
            {1.874, 11.950, 10,
             {1.291507177E+01, 1.466298863E+02, -1.534713402E+01, 3.145945973E+00,
              -4.163257839E-01, 3.187963771E-02, -1.291637500E-03, 2.183475087E-05,
              -1.447379511E-07, 8.211272125E-09}},
            {10.332, 17.536, 6,
             {-8.087801117E+01, 1.621573104E+02, -8.536869453E+00, 4.719686976E-01,
              -1.441693666E-02, 2.081618890E-04}},
            {17.536, 18.693, 5,
             {5.333875126E+04, -1.235892298E+04, 1.092657613E+03, -4.265693686E+01,
              6.247205420E-01}},
        },
    },
    {
        'T', -270.0, 400.0, -270.0,
        2,
        {
            {-270.0, 0.0, 15,
             {0.000000000000E+00, 0.387481063640E-01, 0.441944343470E-04, 0.118443231050E-06,
              0.200329735540E-07, 0.901380195590E-09, 0.226511565930E-10, 0.360711542050E-12,
              0.384939398830E-14, 0.282135219250E-16, 0.142515947790E-18, 0.487686622860E-21,
              0.107955392700E-23, 0.139450270620E-26, 0.797951539270E-30},
             0},
            {0.0, 400.0, 9,
             {0.000000000000E+00, 0.387481063640E-01, 0.332922278800E-04, 0.206182434040E-06,
              -0.218822568460E-08, 0.109968809280E-10, -0.308157587720E-13, 0.454791352900E-16,
              -0.275129016730E-19},
             0},
        },
        2,
        {
            {-5.603, 0.0, 8,
             {0.0000000E+00, 2.5949192E+01, -2.1316967E-01, 7.9018692E-01, 4.2527777E-01,
              1.3304473E-01, 2.0241446E-02, 1.2668171E-03}},
            {0.0, 20.872, 7,
             {0.000000E+00, 2.592800E+01, -7.602961E-01, 4.637791E-02, -2.165394E-03,
              6.048144E-05, -7.293422E-07}},
        },
    },
};

#define TC_N_TYPES (sizeof TC_TYPES / sizeof TC_TYPES[0])

/* How far (mV) beyond the exact EMF range ends the inverse still answers (see the top). */
#define TC_EMF_SLACK 1e-9
/* Newton stops after a step no larger than TC_STEP_DONE (degC): with quadratic
 * convergence the error left is about |f''/(2 f')| * step^2, and |f''/(2 f')| is at most
 * ~0.2 /degC over every type's range (at -270 degC; ~0.003 typically), so <= ~2e-9 degC.
 * Bisection steps stop when the bracket is narrower than TC_T_TOL. */
#define TC_STEP_DONE 1e-4
#define TC_T_TOL 1e-10
#define TC_MAX_ITER 200
/* Conversions a batch advances in lock-step (a small stack array, no allocation). */
#define TC_BLOCK 32
/* NIST's inverse polynomials are within 0.06 degC of the reference function, so a seed
 * further than this from a segment joint names the forward segment by itself. */
#define TC_SEED_MARGIN 1.0
/* exp() of less than this adds under half an ulp of type K's EMF (>30 mV, t > 839 degC
 * when it applies): skipping it gives bit-identical results, faster. */
#define TC_K_EXP_NEGLIGIBLE (-60.0)
/* Bisection seeding stops when the bracket is this narrow (degC). */
#define TC_SEED_WIDTH 0.5

static const tc_type_def *tc_lookup(char tc_type)
{
    char c = tc_type;
    if (c >= 'a' && c <= 'z') {
        c = (char)(c - 'a' + 'A');
    }
    for (size_t i = 0; i < TC_N_TYPES; i++) {
        if (TC_TYPES[i].letter == c) {
            return &TC_TYPES[i];
        }
    }
    return NULL;
}

/* The forward segment holding t (t already inside the type's range). */
static const tc_fwd_seg *tc_fwd_segment(const tc_type_def *def, double t)
{
    for (int i = 0; i < def->n_fwd - 1; i++) {
        if (t <= def->fwd[i].t_hi) {
            return &def->fwd[i];
        }
    }
    return &def->fwd[def->n_fwd - 1];
}

/* Horner's scheme, unrolled: a switch on the coefficient count jumps into a straight
 * run of steps (the same operations in the same order as the loop, without its
 * overhead; this is the hot path of every conversion). */
#define TC_H(i) y = y * x + c[i]
static double tc_poly(const double *c, int n, double x)
{
    double y = 0.0;
    switch (n) {
    case 15: TC_H(14); /* fallthrough */
    case 14: TC_H(13); /* fallthrough */
    case 13: TC_H(12); /* fallthrough */
    case 12: TC_H(11); /* fallthrough */
    case 11: TC_H(10); /* fallthrough */
    case 10: TC_H(9); /* fallthrough */
    case 9: TC_H(8); /* fallthrough */
    case 8: TC_H(7); /* fallthrough */
    case 7: TC_H(6); /* fallthrough */
    case 6: TC_H(5); /* fallthrough */
    case 5: TC_H(4); /* fallthrough */
    case 4: TC_H(3); /* fallthrough */
    case 3: TC_H(2); /* fallthrough */
    case 2: TC_H(1); /* fallthrough */
    case 1: TC_H(0); /* fallthrough */
    default: break;
    }
    return y;
}
#undef TC_H

/* The same polynomial and its derivative in one pass (Horner carries both). */
#define TC_HD(i) dy = dy * x + y, y = y * x + c[i]
static inline double tc_poly_d(const double *c, int n, double x, double *deriv)
{
    double y = 0.0;
    double dy = 0.0;
    switch (n) {
    case 15: TC_HD(14); /* fallthrough */
    case 14: TC_HD(13); /* fallthrough */
    case 13: TC_HD(12); /* fallthrough */
    case 12: TC_HD(11); /* fallthrough */
    case 11: TC_HD(10); /* fallthrough */
    case 10: TC_HD(9); /* fallthrough */
    case 9: TC_HD(8); /* fallthrough */
    case 8: TC_HD(7); /* fallthrough */
    case 7: TC_HD(6); /* fallthrough */
    case 6: TC_HD(5); /* fallthrough */
    case 5: TC_HD(4); /* fallthrough */
    case 4: TC_HD(3); /* fallthrough */
    case 3: TC_HD(2); /* fallthrough */
    case 2: TC_HD(1); /* fallthrough */
    case 1: TC_HD(0); /* fallthrough */
    default: break;
    }
    *deriv = dy;
    return y;
}
#undef TC_HD

/* Type K's term above 0 degC, a0 exp(a1 (t - a2)^2); *deriv gets its derivative. An exp()
 * of less than TC_K_EXP_NEGLIGIBLE is under half an ulp of the EMF there: left out. */
static inline double tc_k_exp(double t, double *deriv)
{
    double u = t - K_A2;
    double arg = K_A1 * u * u;
    if (arg <= TC_K_EXP_NEGLIGIBLE) {
        *deriv = 0.0;
        return 0.0;
    }
    double x = K_A0 * exp(arg);
    *deriv = x * 2.0 * K_A1 * u;
    return x;
}

/* EMF of one segment at t. */
static double tc_seg_eval(const tc_fwd_seg *seg, double t)
{
    double e = tc_poly(seg->c, seg->n, t);
    if (seg->has_exp) {
        double unused;
        e += tc_k_exp(t, &unused);
    }
    return e;
}

/* EMF of one segment at t and its derivative dE/dt (the hot path of the inverse). */
static inline double tc_seg_eval_d(const tc_fwd_seg *seg, double t, double *deriv)
{
    /* The exp() call first: nothing of the polynomial is live across it to be spilled. */
    double x = 0.0;
    double dx = 0.0;
    if (seg->has_exp) {
        x = tc_k_exp(t, &dx);
    }
    double de;
    double e = tc_poly_d(seg->c, seg->n, t, &de);
    *deriv = de + dx;
    return e + x;
}

static double tc_forward(const tc_type_def *def, double t)
{
    return tc_seg_eval(tc_fwd_segment(def, t), t);
}

static int tc_t_in_range(const tc_type_def *def, double t)
{
    return t >= def->t_min && t <= def->t_max; /* false for NaN */
}

/* One inverse in progress: the root of forward(t) == emf inside one forward segment,
 * over the bracket [lo, hi] where forward(lo) <= emf <= forward(hi) (up to the published
 * functions' tiny steps at the segment joints). The scalar call runs one job to the end;
 * the batch call advances a block of jobs in lock-step, so independent conversions
 * overlap in the CPU instead of waiting on one another's long dependency chains. Both
 * run the very same steps, so batch and scalar results are identical. */
typedef struct {
    const tc_fwd_seg *seg;
    double emf;
    double t, lo, hi;
    int done;
} tc_job;

/* Seed a job: NIST's approximate inverse polynomial where published, else bisection. */
static void tc_job_start(const tc_type_def *def, double emf, tc_job *job)
{
    double seed = NAN;
    for (int i = def->n_inv - 1; i >= 0; i--) {
        const tc_inv_seg *inv = &def->inv[i];
        if (emf >= inv->e_lo && emf <= inv->e_hi) {
            seed = tc_poly(inv->d, inv->n, emf);
            break;
        }
    }

    /* Forward segment holding the root. A seed well clear of every joint names it;
     * otherwise compare emf with the EMF at each joint (the function is monotonic). */
    int s = -1;
    if (seed == seed) {
        int i = 0;
        while (i < def->n_fwd - 1 && seed > def->fwd[i].t_hi) {
            i++;
        }
        int near_lo = i > 0 && seed - def->fwd[i].t_lo < TC_SEED_MARGIN;
        int near_hi = i < def->n_fwd - 1 && def->fwd[i].t_hi - seed < TC_SEED_MARGIN;
        if (!near_lo && !near_hi) {
            s = i;
        }
    }
    if (s < 0) {
        s = def->n_fwd - 1;
        for (int i = 0; i < def->n_fwd - 1; i++) {
            if (emf <= tc_seg_eval(&def->fwd[i], def->fwd[i].t_hi)) {
                s = i;
                break;
            }
        }
    }
    const tc_fwd_seg *seg = &def->fwd[s];
    double lo = seg->t_lo > def->t_inv_min ? seg->t_lo : def->t_inv_min;
    double hi = seg->t_hi;

    if (seed == seed) {
        seed = seed < lo ? lo : (seed > hi ? hi : seed);
    } else {
        /* No published inverse here: bisect on the forward function to a seed. */
        while (hi - lo > TC_SEED_WIDTH) {
            double mid = 0.5 * (lo + hi);
            if (tc_seg_eval(seg, mid) > emf) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        seed = 0.5 * (lo + hi);
    }
    job->seg = seg;
    job->emf = emf;
    job->t = seed;
    job->lo = lo;
    job->hi = hi;
    job->done = 0;
}

/* One safeguarded Newton step: Newton on the exact function with its analytic
 * derivative, or a bisection step whenever Newton would leave the bracket. */
static void tc_job_step(tc_job *job)
{
    const double t = job->t;
    double de;
    const double r = tc_seg_eval_d(job->seg, t, &de) - job->emf;
    double lo = job->lo;
    double hi = job->hi;
    if (r > 0.0) {
        hi = t;
    } else {
        lo = t;
    }
    double tn = t - r / de;
    const int newton = de > 0.0 && tn >= lo && tn <= hi; /* false for NaN */
    if (!newton) {
        tn = 0.5 * (lo + hi);
    }
    job->lo = lo;
    job->hi = hi;
    job->t = r == 0.0 ? t : tn;
    job->done = r == 0.0 || (newton && fabs(tn - t) <= TC_STEP_DONE) || hi - lo <= TC_T_TOL;
}

/* Inverse for an EMF already checked to lie in [forward(t_inv_min), forward(t_max)]
 * (give or take TC_EMF_SLACK: the bracket then pins the answer to the range end). */
static double tc_inverse(const tc_type_def *def, double emf)
{
    tc_job job;
    tc_job_start(def, emf, &job);
    for (int it = 0; it < TC_MAX_ITER && !job.done; it++) {
        tc_job_step(&job);
    }
    return job.t;
}

static double tc_emf_min(const tc_type_def *def)
{
    /* forward(t_inv_min) == forward(t_min) for every type: for B both are 0 mV. */
    return tc_forward(def, def->t_min);
}

static double tc_emf_max(const tc_type_def *def)
{
    return tc_forward(def, def->t_max);
}

static int tc_emf_accepted(double emf, double e_min, double e_max)
{
    return emf >= e_min - TC_EMF_SLACK && emf <= e_max + TC_EMF_SLACK; /* false for NaN */
}

static int tc_emf_in_range(const tc_type_def *def, double emf)
{
    return tc_emf_accepted(emf, tc_emf_min(def), tc_emf_max(def));
}

int ec_tc_celsius_to_emf(char tc_type, double t_c, double *emf_mv)
{
    const tc_type_def *def = tc_lookup(tc_type);
    if (def == NULL || emf_mv == NULL) {
        return EC_EINVAL;
    }
    if (!tc_t_in_range(def, t_c)) {
        return EC_ERANGE;
    }
    *emf_mv = tc_forward(def, t_c);
    return EC_OK;
}

int ec_tc_emf_to_celsius(char tc_type, double emf_mv, double *t_c)
{
    const tc_type_def *def = tc_lookup(tc_type);
    if (def == NULL || t_c == NULL) {
        return EC_EINVAL;
    }
    if (!tc_emf_in_range(def, emf_mv)) {
        return EC_ERANGE;
    }
    *t_c = tc_inverse(def, emf_mv);
    return EC_OK;
}

int ec_tc_compensated(char tc_type, double emf_mv, double cj_c, double *t_c)
{
    const tc_type_def *def = tc_lookup(tc_type);
    if (def == NULL || t_c == NULL) {
        return EC_EINVAL;
    }
    if (!tc_t_in_range(def, cj_c)) {
        return EC_ERANGE;
    }
    double total = emf_mv + tc_forward(def, cj_c);
    if (!tc_emf_in_range(def, total)) {
        return EC_ERANGE;
    }
    *t_c = tc_inverse(def, total);
    return EC_OK;
}

/* Temperature range of the forward function, and the EMF range the inverse accepts
 * (forward(t_min) .. forward(t_max), plus TC_EMF_SLACK either side). Type B: the
 * inverse accepts 0 mV .. forward(1820) and answers in [T_B_EMF_ZERO ~ 42.13, 1820]
 * degC (see the top of this file). */
int ec_tc_range(char tc_type, double *t_min, double *t_max, double *emf_min, double *emf_max)
{
    const tc_type_def *def = tc_lookup(tc_type);
    if (def == NULL) {
        return EC_EINVAL;
    }
    if (t_min != NULL) {
        *t_min = def->t_min;
    }
    if (t_max != NULL) {
        *t_max = def->t_max;
    }
    if (emf_min != NULL) {
        *emf_min = tc_emf_min(def);
    }
    if (emf_max != NULL) {
        *emf_max = tc_emf_max(def);
    }
    return EC_OK;
}

int ec_tc_celsius_to_emf_batch(char tc_type, const double *t_c, double *emf_mv, uint8_t *status, size_t n)
{
    const tc_type_def *def = tc_lookup(tc_type);
    if (def == NULL) {
        return EC_EINVAL;
    }
    if (n == 0) {
        return EC_OK;
    }
    if (t_c == NULL || emf_mv == NULL || status == NULL) {
        return EC_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        double t = t_c[i];
        if (tc_t_in_range(def, t)) {
            emf_mv[i] = tc_forward(def, t);
            status[i] = EC_ST_OK;
        } else {
            emf_mv[i] = NAN;
            status[i] = EC_ST_RANGE;
        }
    }
    return EC_OK;
}

/* Every entry is compensated with the one cold-junction temperature cj_c; a cj_c
 * outside the type's range marks every entry EC_ST_RANGE. */
int ec_tc_emf_to_celsius_batch(char tc_type, const double *emf_mv, double cj_c, double *t_c, uint8_t *status,
                               size_t n)
{
    const tc_type_def *def = tc_lookup(tc_type);
    if (def == NULL) {
        return EC_EINVAL;
    }
    if (n == 0) {
        return EC_OK;
    }
    if (emf_mv == NULL || t_c == NULL || status == NULL) {
        return EC_EINVAL;
    }
    int cj_ok = tc_t_in_range(def, cj_c);
    double cj_emf = cj_ok ? tc_forward(def, cj_c) : 0.0;
    double e_min = tc_emf_min(def);
    double e_max = tc_emf_max(def);
    tc_job jobs[TC_BLOCK];
    for (size_t base = 0; base < n; base += TC_BLOCK) {
        size_t m = n - base < TC_BLOCK ? n - base : TC_BLOCK;
        for (size_t i = 0; i < m; i++) {
            double e = emf_mv[base + i] + cj_emf;
            if (cj_ok && tc_emf_accepted(e, e_min, e_max)) {
                tc_job_start(def, e, &jobs[i]);
                status[base + i] = EC_ST_OK;
            } else {
                jobs[i].t = NAN;
                jobs[i].done = 1;
                status[base + i] = EC_ST_RANGE;
            }
        }
        for (int it = 0; it < TC_MAX_ITER; it++) {
            int pending = 0;
            for (size_t i = 0; i < m; i++) {
                if (!jobs[i].done) {
                    tc_job_step(&jobs[i]);
                    pending |= !jobs[i].done;
                }
            }
            if (!pending) {
                break;
            }
        }
        for (size_t i = 0; i < m; i++) {
            t_c[base + i] = jobs[i].t;
        }
    }
    return EC_OK;
}
