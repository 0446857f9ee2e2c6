/* test_tighten.c - ec_core_tighten_rule: Python may make a rule stricter at run time (an agreement
 * band narrowed at a settled soak), never looser than the station configured it, and may not loosen
 * a tripped rule back. The register file runs in plant-clock mode and the core is stepped with
 * ec_core_run_ticks(), so timings are exact.
 */
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIM_FIXTURE_NAME "tighten"
#include "sim_fixture.h"

enum { CH_TEMP = 0, CH_SAFETY = 1, CH_SWITCH = 2 };
enum { R_AGREE = 0, R_HIGH = 1, R_LOW = 2, R_RATE = 3, R_DIGITAL = 4 };

static void add_rule(ec_core *c, const char *name, int kind, int channel, double threshold, int expect)
{
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, name);
    rc.kind = kind;
    rc.channel = channel;
    rc.threshold = threshold;
    rc.debounce_ms = kind == EC_RULE_AGREE ? 100 : 0;
    rc.hysteresis = kind == EC_RULE_AGREE ? 5 : 0;
    rc.channel2 = kind == EC_RULE_AGREE ? CH_SAFETY : -1;
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == expect);
}

/* control TC, safety TC, a switch; one heater; an agree rule (band 150) and one rule of each other kind */
static ec_core *make_core(void)
{
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    static const char *names[] = {"chamber_temp", "chamber_temp_safety", "lid_closed"};
    for (int i = 0; i < 3; i++) {
        ec_channel_cfg_default(&ch);
        strcpy(ch.name, names[i]);
        ch.kind = i == CH_SWITCH ? EC_CH_DIGITAL : EC_CH_ANALOG;
        ch.input = i == CH_SWITCH ? 0 : i;
        ch.range_lo = -50;
        ch.range_hi = 1200;
        ch.rate_window_ms = i == CH_TEMP ? 100 : 0;
        CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == i);
    }
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    add_rule(c, "chamber_tc_disagree", EC_RULE_AGREE, CH_TEMP, 150, R_AGREE);
    add_rule(c, "overtemp", EC_RULE_HIGH, CH_SAFETY, 930, R_HIGH);
    add_rule(c, "too_cold", EC_RULE_LOW, CH_SAFETY, -20, R_LOW);
    add_rule(c, "too_fast", EC_RULE_RATE_HIGH, CH_TEMP, 1e9, R_RATE); /* never trips here */
    add_rule(c, "lid", EC_RULE_DIGITAL, CH_SWITCH, 1, R_DIGITAL);
    regs->di[0] = 1;
    return c;
}

static double effective(ec_core *c, int rule)
{
    double t = NAN;
    CHECK(ec_core_rule_threshold(c, rule, &t) == EC_OK);
    return t;
}

static uint64_t tripped_rules(ec_core *c)
{
    uint64_t t = 0;
    CHECK(ec_core_rules(c, &t, NULL, NULL) == EC_OK);
    return t;
}

TEST(a_looser_or_odd_threshold_is_refused_and_changes_nothing)
{
    open_regs();
    ec_core *c = make_core();
    CHECK(ec_core_tighten_rule(c, R_AGREE, 150.001, err, sizeof err) == EC_ERANGE);
    CHECK(strstr(err, "looser than its configured threshold 150") != NULL);
    CHECK(ec_core_tighten_rule(c, R_HIGH, 931, err, sizeof err) == EC_ERANGE);
    CHECK(ec_core_tighten_rule(c, R_LOW, -21, err, sizeof err) == EC_ERANGE);
    CHECK(ec_core_tighten_rule(c, R_AGREE, NAN, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_tighten_rule(c, R_AGREE, -INFINITY, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_tighten_rule(c, R_HIGH, -INFINITY, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_tighten_rule(c, R_AGREE, 5, err, sizeof err) == EC_ERANGE); /* not above its hysteresis */
    CHECK(strstr(err, "hysteresis") != NULL);
    CHECK(ec_core_tighten_rule(c, R_HIGH, -60, err, sizeof err) == EC_ERANGE); /* below the channel's range */
    CHECK(ec_core_tighten_rule(c, R_RATE, 1e8, err, sizeof err) == EC_EINVAL);
    CHECK(strstr(err, "only high, low and agree") != NULL);
    CHECK(ec_core_tighten_rule(c, R_DIGITAL, 1, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_tighten_rule(c, 5, 1, err, sizeof err) == EC_ENOTFOUND);
    CHECK(ec_core_tighten_rule(c, -1, 1, err, sizeof err) == EC_ENOTFOUND);
    CHECK(ec_core_tighten_rule(NULL, 0, 1, err, sizeof err) == EC_EINVAL);
    CHECK(effective(c, R_AGREE) == 150 && effective(c, R_HIGH) == 930 && effective(c, R_LOW) == -20);
    /* nothing changed in behaviour either: 140 apart stays inside the configured band */
    regs->ai[0] = 460;
    regs->ai[1] = 600;
    run_ms(c, 300);
    CHECK(tripped_rules(c) == 0);
    /* stricter, then back to the configured value: both accepted */
    CHECK(ec_core_tighten_rule(c, R_HIGH, 900, err, sizeof err) == EC_OK);
    CHECK(ec_core_tighten_rule(c, R_LOW, 0, err, sizeof err) == EC_OK);
    CHECK(effective(c, R_HIGH) == 900 && effective(c, R_LOW) == 0);
    CHECK(ec_core_tighten_rule(c, R_HIGH, 930, err, sizeof err) == EC_OK);
    CHECK(ec_core_tighten_rule(c, R_LOW, -20, err, sizeof err) == EC_OK);
    CHECK(effective(c, R_HIGH) == 930 && effective(c, R_LOW) == -20);
    ec_core_free(c);
    close_regs();
}

TEST(a_tightened_band_trips_at_the_band_and_events_carry_it)
{
    open_regs();
    ec_core *c = make_core();
    regs->ai[0] = 560; /* 40 apart: inside 150, outside 30 */
    regs->ai[1] = 600;
    run_ms(c, 300);
    CHECK(tripped_rules(c) == 0);
    CHECK(ec_core_tighten_rule(c, R_AGREE, 30, err, sizeof err) == EC_OK);
    run_ms(c, 99);
    CHECK(tripped_rules(c) == 0); /* the debounce runs as configured */
    run_ms(c, 3);
    CHECK(tripped_rules(c) == 1u << R_AGREE);
    ec_event ev[32];
    int n = ec_core_drain_events(c, ev, 32);
    int trips = 0;
    for (int i = 0; i < n; i++) {
        if (ev[i].kind == EC_EV_TRIP) {
            trips++;
            CHECK(ev[i].rule == R_AGREE);
            CHECK_NEAR(ev[i].threshold, 30, 0);
            CHECK_NEAR(ev[i].value, -40, 1e-9);
        }
    }
    CHECK(trips == 1);
    /* tripped: loosening back is refused and keeps the tight band; tightening further is allowed */
    CHECK(ec_core_tighten_rule(c, R_AGREE, 150, err, sizeof err) == EC_ESTATE);
    CHECK(strstr(err, "tripped") != NULL);
    CHECK(effective(c, R_AGREE) == 30);
    CHECK(ec_core_tighten_rule(c, R_AGREE, 25, err, sizeof err) == EC_OK);
    CHECK(ec_core_tighten_rule(c, R_AGREE, 30, err, sizeof err) == EC_ESTATE);
    /* the reset is judged at the tight band: 22 apart clears below 25 - 5 only once under 20 */
    regs->ai[0] = 578;
    run_ms(c, 2);
    CHECK(ec_core_reset(c, R_AGREE, err, sizeof err) == EC_ECONDITION);
    CHECK(strstr(err, "threshold 25") != NULL);
    regs->ai[0] = 585;
    run_ms(c, 2);
    CHECK(ec_core_reset(c, R_AGREE, err, sizeof err) == EC_OK);
    CHECK(ec_core_tighten_rule(c, R_AGREE, 150, err, sizeof err) == EC_OK); /* reset: the ramp's band again */
    regs->ai[0] = 480; /* 120 apart: a ramp, inside the configured band */
    run_ms(c, 300);
    CHECK(tripped_rules(c) == 0);
    ec_core_free(c);
    close_regs();
}

TEST(a_tightened_high_limit_trips_below_the_configured_one)
{
    open_regs();
    ec_core *c = make_core();
    regs->ai[0] = 900;
    regs->ai[1] = 910;
    run_ms(c, 5);
    CHECK(tripped_rules(c) == 0);
    CHECK(ec_core_tighten_rule(c, R_HIGH, 905, err, sizeof err) == EC_OK);
    run_ms(c, 2);
    CHECK(tripped_rules(c) == 1u << R_HIGH);
    ec_core_free(c);
    close_regs();
}

/* ec_core_snapshot: the separate accessors' answers, all at once, of one tick */
static void check_snapshot_matches(ec_core *c)
{
    ec_snapshot s;
    memset(&s, 0xA5, sizeof s); /* every field it reports must be written */
    CHECK(ec_core_snapshot(c, &s) == EC_OK);
    ec_value v[3];
    CHECK(ec_core_latest(c, v, 3) == 3);
    CHECK(s.n_channels == 3 && s.n_outputs == 1 && s.n_rules == 5);
    for (int i = 0; i < 3; i++) {
        CHECK(memcmp(&s.value[i], &v[i].value, sizeof(double)) == 0); /* NaN included */
        CHECK(s.status[i] == v[i].status && s.t_ns[i] == v[i].t_ns);
        CHECK(s.t_ns[i] <= s.now_ns);
    }
    uint64_t lv = 9, rq = 9, fo = 9, tr = 9, rs = 9;
    int32_t first = 99;
    CHECK(ec_core_outputs(c, &lv, &rq, &fo) == EC_OK);
    CHECK(ec_core_rules(c, &tr, &rs, &first) == EC_OK);
    CHECK(s.levels == lv && s.requested == rq && s.forced == fo);
    CHECK(s.tripped == tr && s.resettable == rs && s.first_out == first);
    for (int r = 0; r < 5; r++) {
        CHECK(s.threshold[r] == effective(c, r));
    }
    ec_stats st;
    CHECK(ec_core_stats(c, &st) == EC_OK);
    CHECK(s.tick == st.ticks);
}

TEST(a_snapshot_is_what_the_separate_accessors_say)
{
    open_regs();
    ec_core *c = make_core();
    CHECK(ec_core_snapshot(NULL, NULL) == EC_EINVAL);
    check_snapshot_matches(c); /* before any tick: NODATA, nothing tripped, no first out */
    regs->ai[0] = 560;
    regs->ai[1] = 600;
    run_ms(c, 300);
    CHECK(ec_core_request_output(c, 0, 1, err, sizeof err) == EC_OK);
    check_snapshot_matches(c);
    CHECK(ec_core_tighten_rule(c, R_AGREE, 30, err, sizeof err) == EC_OK);
    regs->di[0] = 0; /* the lid opens: the heater is forced safe */
    run_ms(c, 150);
    ec_snapshot s;
    CHECK(ec_core_snapshot(c, &s) == EC_OK);
    CHECK(s.tripped == ((1u << R_AGREE) | (1u << R_DIGITAL)) && s.forced == 1 && s.threshold[R_AGREE] == 30);
    check_snapshot_matches(c);
    regs->di[0] = 1;
    regs->ai[0] = 590;
    run_ms(c, 5);
    CHECK(ec_core_snapshot(c, &s) == EC_OK);
    CHECK(s.resettable != 0); /* latched, clear: resettable, as ec_core_rules says */
    check_snapshot_matches(c);
    ec_core_free(c);
    close_regs();
}

int main(void)
{
    RUN(a_looser_or_odd_threshold_is_refused_and_changes_nothing);
    RUN(a_tightened_band_trips_at_the_band_and_events_carry_it);
    RUN(a_tightened_high_limit_trips_below_the_configured_one);
    RUN(a_snapshot_is_what_the_separate_accessors_say);
    CTEST_END();
}
