/* test_core_safety.c - the safety core's guarantees under attack (issue 13, "Defects to fix in the core").
 *
 * Each test reproduces one defect found by the adversarial review, stepping the core tick by tick
 * with ec_core_run_ticks() on the sim driver in plant-clock mode, so every timing is exact.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#define SIM_FIXTURE_NAME "safety"
#include "sim_fixture.h"

#ifndef EC_EVF_LATCH_BAD
#define EC_EVF_LATCH_BAD 32
#endif

static char latch[80];

enum { AI_TEMP = 0, AI_PRESS = 1 };
enum { OUT_HEATER = 0, OUT_H2 = 1, OUT_VENT = 2 };

/* the shared register file, plus this program's latch file (removed first) and a plant at rest */
static void open_safety_regs(void)
{
    snprintf(latch, sizeof latch, "/tmp/ec-safety-%d.latch", (int)getpid());
    unlink(latch);
    open_regs();
    regs->ai[AI_TEMP] = 20;
    regs->ai[AI_PRESS] = 1.0;
}

static void close_safety_regs(void)
{
    close_regs();
    unlink(latch);
}

/* chamber_temp (0), chamber_pressure (1), node_temp injected (2); heater, h2, vent (safe 1);
 * rules: chamber_overtemp (latched, 650), over_pressure (latched unless `chatter`), node_hot (latched, 400) */
static ec_core *make_core(uint32_t event_ring, int pressure_latch, double overtemp_threshold)
{
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    if (event_ring) {
        cc.event_ring = event_ring;
    }
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "chamber_temp");
    ch.input = AI_TEMP;
    ch.range_lo = -50;
    ch.range_hi = 1200;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    strcpy(ch.name, "chamber_pressure");
    ch.input = AI_PRESS;
    ch.range_lo = 0;
    ch.range_hi = 10;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 1);
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "node_temp");
    ch.kind = EC_CH_INJECTED;
    ch.max_age_ms = 100;
    ch.range_lo = -50;
    ch.range_hi = 2000;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 2);
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    oc.line = 0;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == OUT_HEATER);
    strcpy(oc.name, "h2_inlet_valve");
    oc.line = 1;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == OUT_H2);
    strcpy(oc.name, "vent_valve");
    oc.line = 2;
    oc.safe_level = 1;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == OUT_VENT);
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "chamber_overtemp");
    rc.kind = EC_RULE_HIGH;
    rc.channel = 0;
    rc.threshold = overtemp_threshold;
    rc.hysteresis = 10;
    rc.debounce_ms = 5;
    rc.action = (1u << OUT_HEATER) | (1u << OUT_H2) | (1u << OUT_VENT);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    strcpy(rc.name, "over_pressure");
    rc.channel = 1;
    rc.threshold = 2.5;
    rc.hysteresis = 0.1;
    rc.debounce_ms = 0;
    rc.latch = pressure_latch;
    rc.action = (1u << OUT_H2) | (1u << OUT_VENT);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 1);
    strcpy(rc.name, "node_hot");
    rc.channel = 2;
    rc.threshold = 400;
    rc.hysteresis = 0;
    rc.latch = 1;
    rc.action = 1u << OUT_HEATER;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 2);
    return c;
}

static int count_events(ec_core *c, int kind, int rule, int flags, int *first_outs)
{
    ec_event ev[256];
    int found = 0, n;
    while ((n = ec_core_drain_events(c, ev, 256)) > 0) {
        for (int i = 0; i < n; i++) {
            if (first_outs != NULL && (ev[i].flags & EC_EVF_FIRST_OUT)) {
                (*first_outs)++;
            }
            if (ev[i].kind == kind && (rule < -1 || ev[i].rule == rule) && (ev[i].flags & flags) == flags) {
                found++;
            }
        }
    }
    return found;
}

/* defect 1: a trip restored from the latch file cannot be reset before it was evaluated on fresh data */
TEST(restored_trip_needs_an_evaluation_before_a_reset)
{
    open_safety_regs();
    ec_core *c = make_core(0, 1, 650);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 0);
    regs->ai[AI_TEMP] = 900;
    run_ms(c, 10);
    CHECK(ec_core_inject(c, 2, 900, EC_ST_OK, ec_core_now_ns(c), err, sizeof err) == EC_OK);
    run_ms(c, 2);
    uint64_t tripped = 0, resettable = ~0ULL;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 5); /* chamber_overtemp and node_hot */
    ec_core_free(c);     /* the process is killed with both latched, at 900 degC */

    c = make_core(0, 1, 650);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 2);
    err[0] = '\0';
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_ECONDITION); /* before start: never evaluated */
    CHECK(strstr(err, "not yet evaluated on fresh data") != NULL);
    ec_core_rules(c, &tripped, &resettable, NULL);
    CHECK(tripped == 5 && resettable == 0);
    run_ms(c, 1); /* still 900: the condition holds */
    CHECK(ec_core_reset(c, 0, err, sizeof err) == EC_ECONDITION);
    regs->ai[AI_TEMP] = 20;
    run_ms(c, 1); /* node_temp has had no value yet: its start-up grace is no evaluation */
    ec_core_rules(c, &tripped, &resettable, NULL);
    CHECK(resettable == 1);
    CHECK(ec_core_reset(c, 2, err, sizeof err) == EC_ECONDITION);
    CHECK(strstr(err, "not yet evaluated on fresh data") != NULL);
    CHECK(ec_core_inject(c, 2, 20, EC_ST_OK, ec_core_now_ns(c), err, sizeof err) == EC_OK);
    run_ms(c, 1);
    ec_core_rules(c, &tripped, &resettable, NULL);
    CHECK(resettable == 5);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    ec_core_free(c);
    close_safety_regs();
}

/* defect 2: a stamp inside the future tolerance is clamped to the core clock */
TEST(future_stamp_neither_blocks_honest_readings_nor_keeps_a_channel_fresh)
{
    open_safety_regs();
    ec_core *c = make_core(0, 1, 650);
    run_ms(c, 1);
    CHECK(ec_core_inject(c, 2, 25, EC_ST_OK, ec_core_now_ns(c) + 900000000LL, err, sizeof err) == EC_OK);
    run_ms(c, 1);
    int refused = 0;
    for (int i = 0; i < 100; i++) {
        refused += ec_core_inject(c, 2, 25, EC_ST_OK, ec_core_now_ns(c), err, sizeof err) != EC_OK;
        run_ms(c, 1);
    }
    CHECK(refused == 0);
    CHECK(ec_core_inject(c, 2, 1400, EC_ST_OK, ec_core_now_ns(c), err, sizeof err) == EC_OK);
    run_ms(c, 1);
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped & 4);
    /* a 100 ms channel fed once with a stamp 900 ms ahead goes stale 100 ms after now, not 1 s */
    CHECK(ec_core_inject(c, 2, 25, EC_ST_OK, ec_core_now_ns(c) + 900000000LL, err, sizeof err) == EC_OK);
    run_ms(c, 110);
    ec_value v[3];
    ec_core_latest(c, v, 3);
    CHECK(v[2].status & EC_ST_STALE);
    ec_core_free(c);
    close_safety_regs();
}

/* defect 3: a 1 ms sensor fault every 2 s must not blind a rate rule (HD absorption_runaway settings) */
TEST(periodic_one_tick_fault_does_not_blind_a_rate_rule)
{
    open_safety_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "chamber_temp_safety");
    ch.input = AI_TEMP;
    ch.range_lo = -20;
    ch.range_hi = 1100;
    ch.median_n = 5;
    ch.ema_tau_ms = 50;
    ch.rate_window_ms = 5000;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "h2_inlet_valve");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "absorption_runaway");
    rc.kind = EC_RULE_RATE_HIGH;
    rc.channel = 0;
    rc.threshold = 60;
    rc.debounce_ms = 2000;
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    regs->ai[AI_TEMP] = 100;
    run_ms(c, 6000); /* steady: a full rate window of history */
    uint64_t tripped = 0;
    for (int ms = 1; ms <= 12000 && !tripped; ms++) {
        regs->ai[AI_TEMP] = 100 + 720.0 * ms / 12000.0;
        regs->ai_fault[AI_TEMP] = ms % 2000 == 0; /* a 1 ms fault every 2 s */
        run_ms(c, 1);
        ec_core_rules(c, &tripped, NULL, NULL);
    }
    CHECK(tripped == 1);
    ec_core_free(c);
    close_safety_regs();
}

/* defect 4: an injected value stamped like the last one takes effect (the plant clock stands still) */
TEST(same_stamp_injection_takes_effect)
{
    open_safety_regs();
    ec_core *c = make_core(0, 1, 650);
    run_ms(c, 1);
    int64_t t = ec_core_now_ns(c);
    CHECK(ec_core_inject(c, 2, 20, EC_ST_OK, t, err, sizeof err) == EC_OK);
    CHECK(ec_core_run_ticks(c, 1) == EC_OK); /* the plant clock does not move */
    CHECK(ec_core_inject(c, 2, 30, EC_ST_OK, t, err, sizeof err) == EC_OK);
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    ec_value v[3];
    ec_core_latest(c, v, 3);
    CHECK(v[2].value == 30 && v[2].status == EC_ST_OK);
    CHECK(ec_core_inject(c, 2, 1000, EC_ST_OK, t, err, sizeof err) == EC_OK);
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 4);
    ec_core_free(c);
    close_safety_regs();
}

static void corrupt_latch(off_t at)
{
    int fd = open(latch, O_RDWR);
    uint8_t b = 0;
    CHECK(pread(fd, &b, 1, at) == 1);
    b ^= 0x10;
    CHECK(pwrite(fd, &b, 1, at) == 1);
    close(fd);
}

/* a latch file holding chamber_overtemp tripped, then freed */
static void latch_one_trip(void)
{
    unlink(latch);
    ec_core *c = make_core(0, 1, 650);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 0);
    regs->ai[AI_TEMP] = 700;
    run_ms(c, 10);
    ec_core_free(c);
    regs->ai[AI_TEMP] = 20;
}

/* defect 5: a damaged latch file fails safe, the hash covers thresholds, an early set keeps the file */
TEST(latch_file_fails_safe_and_is_checked)
{
    open_safety_regs();
    uint64_t tripped = 0;
    /* one flipped bit in the magic: every latchable rule comes back tripped, with the reason */
    latch_one_trip();
    corrupt_latch(0);
    ec_core *c = make_core(0, 1, 650);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 3);
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 7);
    CHECK(count_events(c, EC_EV_TRIP, -2, EC_EVF_RESTORED | EC_EVF_LATCH_BAD, NULL) == 3);
    ec_core_free(c);
    c = make_core(0, 1, 650); /* rewritten sane: the fail-safe trips are now the latched state */
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 3);
    CHECK(count_events(c, EC_EV_TRIP, -2, EC_EVF_LATCH_BAD, NULL) == 0);
    ec_core_free(c);

    /* one flipped bit in the trip table: the checksum says so */
    latch_one_trip();
    corrupt_latch(40);
    c = make_core(0, 1, 650);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 3);
    ec_core_free(c);

    /* a file cut short */
    latch_one_trip();
    CHECK(truncate(latch, 8) == 0);
    c = make_core(0, 1, 650);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 3);
    ec_core_free(c);

    /* a changed threshold is a changed rule set: which trip was which cannot be trusted */
    latch_one_trip();
    c = make_core(0, 1, 640);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 3);
    ec_core_free(c);

    /* set before the rules: refused, and the file is not wiped */
    latch_one_trip();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == EC_ESTATE);
    CHECK(strstr(err, "rules") != NULL);
    ec_core_free(c);
    c = make_core(0, 1, 650);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 1);
    ec_core_free(c);
    close_safety_regs();
}

/* defect 6: stop() on a core stepped only by run_ticks leaves nothing energised, for good */
TEST(stop_of_a_stepped_core_is_safe_and_terminal)
{
    open_safety_regs();
    ec_core *c = make_core(0, 1, 650);
    run_ms(c, 2);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_OK);
    CHECK(ec_core_request_output(c, OUT_VENT, 0, err, sizeof err) == EC_OK);
    run_ms(c, 2);
    CHECK(regs->do_level[OUT_HEATER] == 1 && regs->do_level[OUT_VENT] == 0);
    CHECK(ec_core_stop(c) == EC_OK);
    CHECK(regs->do_level[OUT_HEATER] == 0 && regs->do_level[OUT_VENT] == 1);
    CHECK(ec_core_run_ticks(c, 1) == EC_ESTATE);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_ESTATE);
    CHECK(ec_core_start(c, err, sizeof err) == EC_ESTATE);
    ec_core_free(c);
    close_safety_regs();
}

/* defect 7: a chattering non-latched rule with an undrained ring cannot crowd out what matters */
TEST(chattering_rule_cannot_crowd_out_a_latched_trip_or_a_core_fault)
{
    open_safety_regs();
    ec_core *c = make_core(64, 0, 650);
    for (int i = 0; i < 2000; i++) { /* trip/clear pairs, the controller hung: nobody drains */
        regs->ai[AI_PRESS] = i % 2 ? 1.0 : 3.0;
        run_ms(c, 1);
    }
    regs->ai[AI_PRESS] = 1.0;
    regs->ai[AI_TEMP] = 700;
    run_ms(c, 10);
    regs->plant_ns -= 1000000000LL; /* and then the clock jumps back */
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.events_lost > 0);
    CHECK(count_events(c, EC_EV_TRIP, 0, 0, NULL) == 1);
    CHECK(ec_core_stats(c, &st) == EC_OK && st.core_fault == EC_FAULT_CLOCK_BACKWARDS);
    ec_core_free(c);
    c = make_core(64, 0, 650);
    for (int i = 0; i < 2000; i++) {
        regs->ai[AI_PRESS] = i % 2 ? 1.0 : 3.0;
        run_ms(c, 1);
    }
    regs->plant_ns -= 1000000000LL;
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    CHECK(count_events(c, EC_EV_CORE_FAULT, -2, 0, NULL) == 1);
    ec_core_free(c);
    close_safety_regs();
}

/* defects 8 and 9: a core fault is the cascade's only first-out; clock-backwards is resettable */
TEST(core_fault_is_the_only_first_out_and_clock_backwards_resets)
{
    open_safety_regs();
    ec_core *c = make_core(0, 1, 650);
    run_ms(c, 5);
    count_events(c, 0, -2, 0, NULL);
    regs->plant_ns -= 3600LL * 1000000000LL;
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    regs->ai[AI_TEMP] = 700;
    run_ms(c, 10);
    int first_outs = 0;
    CHECK(count_events(c, EC_EV_TRIP, 0, 0, &first_outs) == 1);
    CHECK(first_outs == 1);
    regs->ai[AI_TEMP] = 20;
    run_ms(c, 3); /* the clock advances normally again */
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.core_fault == 0);
    run_ms(c, 1);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_OK);
    ec_core_free(c);
    close_safety_regs();
}

/* defect 10 (kept, documented): hysteresis applies from the start of the debounce, so a noisy
 * value hovering at the threshold still trips once the debounce has run */
TEST(noisy_value_hovering_at_the_threshold_trips)
{
    open_safety_regs();
    ec_core *c = make_core(0, 1, 650);
    run_ms(c, 2);
    for (int ms = 0; ms < 30; ms++) {
        regs->ai[AI_TEMP] = ms % 2 ? 645 : 652; /* 650 +- noise, inside the 10 degC hysteresis */
        run_ms(c, 1);
    }
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 1);
    ec_core_free(c);
    close_safety_regs();
}

int main(void)
{
    RUN(restored_trip_needs_an_evaluation_before_a_reset);
    RUN(future_stamp_neither_blocks_honest_readings_nor_keeps_a_channel_fresh);
    RUN(periodic_one_tick_fault_does_not_blind_a_rate_rule);
    RUN(same_stamp_injection_takes_effect);
    RUN(latch_file_fails_safe_and_is_checked);
    RUN(stop_of_a_stepped_core_is_safe_and_terminal);
    RUN(chattering_rule_cannot_crowd_out_a_latched_trip_or_a_core_fault);
    RUN(core_fault_is_the_only_first_out_and_clock_backwards_resets);
    RUN(noisy_value_hovering_at_the_threshold_trips);
    CTEST_END();
}
