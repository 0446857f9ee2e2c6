/* test_core.c - the sampler's tick, the interlock engine and the gate, on the sim driver.
 *
 * The register file is driven by the test in plant-clock mode and the core is stepped
 * with ec_core_run_ticks(), so every timing below is exact and repeatable. The threaded
 * sampler is exercised at the end and, against a separate plant process, from Python.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#define SIM_FIXTURE_NAME "test"
#include "sim_fixture.h"

enum { AI_TEMP = 0, AI_PRESS = 1, AI_TC = 2, AI_CJ = 3, DI_LID = 0, DI_RESET = 1 };
enum { OUT_HEATER = 0, OUT_H2 = 1, OUT_VENT = 2, OUT_WD = 3 };


/* a small HD-like station: temperature (analog), pressure, lid switch, reset button */
static ec_core *make_core(int with_deadman, double keepalive_ms)
{
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    cc.reset_channel = 3;
    cc.watchdog_output = OUT_WD;
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);

    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "chamber_temp");
    ch.kind = EC_CH_ANALOG;
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
    strcpy(ch.name, "lid_closed");
    ch.kind = EC_CH_DIGITAL;
    ch.input = DI_LID;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 2);
    strcpy(ch.name, "reset_button");
    ch.input = DI_RESET;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 3);

    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    oc.line = 0;
    oc.max_on_ms = keepalive_ms;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == OUT_HEATER);
    strcpy(oc.name, "h2_inlet_valve");
    oc.line = 1;
    oc.max_on_ms = 0;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == OUT_H2);
    strcpy(oc.name, "vent_valve");
    oc.line = 2;
    oc.safe_level = 1;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == OUT_VENT);
    strcpy(oc.name, "watchdog_line");
    oc.line = 3;
    oc.safe_level = 0;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == OUT_WD);

    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "chamber_overtemp");
    rc.kind = EC_RULE_HIGH;
    rc.channel = 0;
    rc.threshold = 650;
    rc.hysteresis = 10;
    rc.debounce_ms = 5;
    rc.action = (1u << OUT_HEATER) | (1u << OUT_H2) | (1u << OUT_VENT);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    strcpy(rc.name, "over_pressure");
    rc.channel = 1;
    rc.threshold = 2.5;
    rc.hysteresis = 0.1;
    rc.debounce_ms = 0;
    rc.action = (1u << OUT_H2) | (1u << OUT_VENT);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 1);
    if (with_deadman) {
        ec_rule_cfg_default(&rc);
        strcpy(rc.name, "controller_deadman");
        rc.kind = EC_RULE_DEADMAN;
        rc.threshold = 100;
        rc.action = (1u << OUT_HEATER) | (1u << OUT_H2) | (1u << OUT_VENT);
        CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 2);
    }
    ec_permissive_cfg pc = {.output = OUT_H2, .channel = 2, .cmp = EC_CMP_EQ, .value = 1};
    CHECK(ec_core_add_permissive(c, &pc, err, sizeof err) == 0);
    ec_permissive_cfg pp = {.output = OUT_H2, .channel = 1, .cmp = EC_CMP_IN, .value = 0.0, .value2 = 2.0};
    CHECK(ec_core_add_permissive(c, &pp, err, sizeof err) == 1);
    return c;
}

static int drain(ec_core *c, ec_event *ev, int max) { return ec_core_drain_events(c, ev, max); }

static const ec_event *find_event(const ec_event *ev, int n, int kind)
{
    for (int i = 0; i < n; i++) {
        if (ev[i].kind == kind) {
            return &ev[i];
        }
    }
    return NULL;
}

TEST(high_rule_trips_latches_and_resets)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 600;
    regs->ai[AI_PRESS] = 1.0;
    regs->di[DI_LID] = 1;
    run_ms(c, 3);
    CHECK(ec_core_set_duty(c, OUT_HEATER, 1.0, err, sizeof err) == EC_OK);
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_OK);
    CHECK(ec_core_request_output(c, OUT_VENT, 0, err, sizeof err) == EC_OK);
    run_ms(c, 25);
    CHECK(regs->do_level[OUT_HEATER] == 1);
    CHECK(regs->do_level[OUT_H2] == 1);
    CHECK(regs->do_level[OUT_VENT] == 0);

    regs->ai[AI_TEMP] = 700; /* over temperature */
    run_ms(c, 4);            /* within the 5 ms debounce: not yet */
    CHECK(regs->do_level[OUT_HEATER] == 1);
    run_ms(c, 2);
    CHECK(regs->do_level[OUT_HEATER] == 0);
    CHECK(regs->do_level[OUT_H2] == 0);
    CHECK(regs->do_level[OUT_VENT] == 1); /* the vent's safe level is open */

    ec_event ev[64];
    int n = drain(c, ev, 64);
    const ec_event *trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL);
    if (trip) {
        CHECK(trip->rule == 0);
        CHECK(trip->flags & EC_EVF_FIRST_OUT);
        CHECK_NEAR(trip->value, 700, 1e-9);
    }
    CHECK(find_event(ev, n, EC_EV_FORCED_SAFE) != NULL);
    int32_t first = -2;
    uint64_t tripped = 0, latched = 0;
    ec_core_rules(c, &tripped, &latched, &first);
    CHECK(first == 0 && tripped == 1 && latched == 0);

    /* a request to energise is refused while forced, naming the rule */
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "chamber_overtemp") != NULL);

    /* reset refused while the condition holds (and within hysteresis) */
    regs->ai[AI_TEMP] = 645;
    run_ms(c, 2);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_ECONDITION);
    CHECK(strstr(err, "chamber_overtemp") != NULL);
    /* the condition clears: still latched, outputs still safe */
    regs->ai[AI_TEMP] = 630;
    run_ms(c, 10);
    ec_core_rules(c, &tripped, &latched, &first);
    CHECK(tripped == 1 && latched == 1);
    CHECK(regs->do_level[OUT_VENT] == 1);
    /* the local reset input resets it once held EC_RESET_HOLD_MS; nothing re-energises implicitly */
    regs->di[DI_RESET] = 1;
    run_ms(c, EC_RESET_HOLD_MS / 2);
    ec_core_rules(c, &tripped, &latched, &first);
    CHECK(tripped == 1); /* a tap is not a reset */
    run_ms(c, EC_RESET_HOLD_MS);
    regs->di[DI_RESET] = 0;
    run_ms(c, 2);
    ec_core_rules(c, &tripped, &latched, &first);
    CHECK(tripped == 0 && first == -1);
    CHECK(regs->do_level[OUT_HEATER] == 0 && regs->do_level[OUT_H2] == 0 && regs->do_level[OUT_VENT] == 1);
    n = drain(c, ev, 64);
    const ec_event *reset = find_event(ev, n, EC_EV_RESET);
    CHECK(reset != NULL && (reset->flags & EC_EVF_LOCAL_INPUT));
    CHECK(find_event(ev, n, EC_EV_RESET_REFUSED) != NULL);
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_OK);
    run_ms(c, 1);
    CHECK(regs->do_level[OUT_H2] == 1);
    ec_core_free(c);
    CHECK(regs->do_level[OUT_H2] == 0); /* freeing the core leaves everything safe */
    close_regs();
}

TEST(first_out_is_the_first_rule_to_trip)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 600;
    regs->ai[AI_PRESS] = 1.0;
    run_ms(c, 2);
    regs->ai[AI_PRESS] = 3.0; /* over-pressure first */
    run_ms(c, 2);
    regs->ai[AI_TEMP] = 900; /* then over-temperature */
    run_ms(c, 10);
    ec_event ev[64];
    int n = drain(c, ev, 64);
    int trips = 0;
    for (int i = 0; i < n; i++) {
        if (ev[i].kind == EC_EV_TRIP) {
            trips++;
            CHECK((ev[i].rule == 1) == ((ev[i].flags & EC_EVF_FIRST_OUT) != 0));
        }
    }
    CHECK(trips == 2);
    int32_t first = -1;
    ec_core_rules(c, NULL, NULL, &first);
    CHECK(first == 1);
    ec_core_free(c);
    close_regs();
}

TEST(non_latched_rule_clears_with_hysteresis)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "flow");
    ch.kind = EC_CH_ANALOG;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "cooling_low");
    rc.kind = EC_RULE_LOW;
    rc.channel = 0;
    rc.threshold = 2.0;
    rc.hysteresis = 0.5;
    rc.latch = 0;
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    regs->ai[0] = 1.0;
    run_ms(c, 2);
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 1);
    regs->ai[0] = 2.3; /* above threshold, inside hysteresis: still tripped */
    run_ms(c, 2);
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 1);
    regs->ai[0] = 2.6;
    run_ms(c, 1);
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 0);
    ec_event ev[16];
    int n = drain(c, ev, 16);
    CHECK(find_event(ev, n, EC_EV_CLEAR) != NULL);
    ec_core_free(c);
    close_regs();
}

TEST(deadman_trips_without_heartbeat)
{
    open_regs();
    ec_core *c = make_core(1, 0);
    regs->ai[AI_TEMP] = 20;
    regs->ai[AI_PRESS] = 1.0;
    regs->di[DI_LID] = 1;
    for (int i = 0; i < 10; i++) {
        ec_core_heartbeat(c);
        run_ms(c, 50);
    }
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 0);
    ec_core_heartbeat(c);
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_OK);
    run_ms(c, 100); /* exactly the timeout: not yet */
    CHECK(regs->do_level[OUT_H2] == 1);
    run_ms(c, 2);
    CHECK(regs->do_level[OUT_H2] == 0);
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 4);
    /* heartbeats again: the latched dead-man now resets by call */
    ec_core_heartbeat(c);
    run_ms(c, 1);
    CHECK(ec_core_reset(c, 2, err, sizeof err) == EC_OK);
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 0);
    ec_core_free(c);
    close_regs();
}

TEST(keepalive_drops_unrefreshed_output)
{
    open_regs();
    ec_core *c = make_core(0, 30);
    regs->ai[AI_TEMP] = 20;
    regs->ai[AI_PRESS] = 1.0;
    run_ms(c, 1);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_OK);
    run_ms(c, 20);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_OK); /* refresh */
    run_ms(c, 25);
    CHECK(regs->do_level[OUT_HEATER] == 1);
    run_ms(c, 10);
    CHECK(regs->do_level[OUT_HEATER] == 0);
    ec_event ev[16];
    int n = drain(c, ev, 16);
    const ec_event *e = find_event(ev, n, EC_EV_KEEPALIVE_DROP);
    CHECK(e != NULL && e->output == OUT_HEATER);
    ec_core_free(c);
    close_regs();
}

TEST(permissive_refuses_with_reason_and_drops)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 20;
    regs->ai[AI_PRESS] = 1.0;
    regs->di[DI_LID] = 0; /* lid open */
    run_ms(c, 1);
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "lid_closed") != NULL);
    ec_event ev[16];
    int n = drain(c, ev, 16);
    const ec_event *e = find_event(ev, n, EC_EV_REFUSED);
    CHECK(e != NULL && e->aux == EC_REFUSE_PERMISSIVE && e->aux2 == 0 && e->channel == 2);
    run_ms(c, 1);
    CHECK(regs->do_level[OUT_H2] == 0);
    regs->di[DI_LID] = 1;
    run_ms(c, 1);
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_OK);
    run_ms(c, 1);
    CHECK(regs->do_level[OUT_H2] == 1);
    regs->ai[AI_PRESS] = 2.2; /* out of the permissive band, below the trip */
    run_ms(c, 1);
    CHECK(regs->do_level[OUT_H2] == 0);
    n = drain(c, ev, 16);
    e = find_event(ev, n, EC_EV_PERMISSIVE_DROP);
    CHECK(e != NULL && e->aux2 == 1);
    /* coming back into the band does not re-energise it by itself */
    regs->ai[AI_PRESS] = 1.0;
    run_ms(c, 3);
    CHECK(regs->do_level[OUT_H2] == 0);
    ec_core_free(c);
    close_regs();
}

TEST(duty_is_burst_fire_over_whole_cycles)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 20;
    regs->ai[AI_PRESS] = 1.0;
    run_ms(c, 1);
    CHECK(ec_core_set_duty(c, OUT_HEATER, 0.25, err, sizeof err) == EC_OK);
    int on = 0, changes = 0, prev = regs->do_level[OUT_HEATER];
    for (int i = 0; i < 2000; i++) {
        run_ms(c, 1);
        on += regs->do_level[OUT_HEATER];
        changes += regs->do_level[OUT_HEATER] != prev;
        prev = regs->do_level[OUT_HEATER];
    }
    CHECK(on >= 480 && on <= 520); /* 25 % of 2000 ms */
    CHECK(changes <= 2 * (2000 / 20)); /* only at cycle boundaries */
    CHECK(ec_core_set_duty(c, OUT_HEATER, 1.5, err, sizeof err) == EC_ERANGE);
    CHECK(ec_core_set_duty(c, OUT_HEATER, 0.0, err, sizeof err) == EC_OK);
    run_ms(c, 21);
    CHECK(regs->do_level[OUT_HEATER] == 0);
    ec_core_free(c);
    close_regs();
}

TEST(watchdog_line_toggles_every_tick)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    int changes = 0, prev = regs->do_level[OUT_WD];
    for (int i = 0; i < 100; i++) {
        run_ms(c, 1);
        changes += regs->do_level[OUT_WD] != prev;
        prev = regs->do_level[OUT_WD];
    }
    CHECK(changes == 100);
    CHECK(ec_core_request_output(c, OUT_WD, 1, err, sizeof err) == EC_EINVAL);
    ec_core_free(c);
    close_regs();
}

TEST(sensor_fault_is_never_a_number_and_trips)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 300;
    regs->ai[AI_PRESS] = 1.0;
    run_ms(c, 2);
    regs->ai_fault[AI_TEMP] = 1;
    run_ms(c, 6);
    ec_value v[4];
    CHECK(ec_core_latest(c, v, 4) == 4);
    CHECK(isnan(v[0].value) && (v[0].status & EC_ST_FAULT));
    ec_event ev[16];
    int n = drain(c, ev, 16);
    const ec_event *e = find_event(ev, n, EC_EV_TRIP);
    CHECK(e != NULL && e->rule == 0 && (e->flags & EC_EVF_SENSOR_BAD));
    ec_core_free(c);
    close_regs();
}

TEST(out_of_range_signal_trips_a_high_rule)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 300;
    regs->ai[AI_PRESS] = 1.0;
    run_ms(c, 2);
    regs->ai[AI_PRESS] = -3.0; /* below the 0..10 bar range: a broken loop, not a low pressure */
    run_ms(c, 2);
    ec_value v[4];
    ec_core_latest(c, v, 4);
    CHECK(v[1].status & EC_ST_RANGE);
    ec_event ev[16];
    int n = drain(c, ev, 16);
    const ec_event *e = find_event(ev, n, EC_EV_TRIP);
    CHECK(e != NULL && e->rule == 1 && (e->flags & EC_EVF_SENSOR_BAD));
    ec_core_free(c);
    close_regs();
}

TEST(plant_clock_stopping_makes_inputs_stale)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 300;
    run_ms(c, 2);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_OK);
    run_ms(c, 1);
    CHECK(regs->do_level[OUT_HEATER] == 1);
    usleep(600000); /* the plant clock does not move for 0.6 s of wall time */
    int wd = regs->do_level[OUT_WD];
    CHECK(ec_core_run_ticks(c, 3) == EC_OK);
    ec_value v[4];
    ec_core_latest(c, v, 4);
    CHECK(v[0].status & EC_ST_STALE);
    /* every timer runs on that clock: a stopped clock is a core fault, everything safe */
    CHECK(regs->do_level[OUT_HEATER] == 0 && regs->do_level[OUT_VENT] == 1);
    CHECK(regs->do_level[OUT_WD] == wd); /* the watchdog line stopped: the relay drops */
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.core_fault == EC_FAULT_CLOCK_STOPPED);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "clock stopped") != NULL);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_ECONDITION); /* still stopped */
    ec_event ev[32];
    int n = drain(c, ev, 32);
    const ec_event *f = find_event(ev, n, EC_EV_CORE_FAULT);
    CHECK(f != NULL && f->aux == EC_FAULT_CLOCK_STOPPED);
    run_ms(c, 2); /* the clock moves again */
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    ec_core_stats(c, &st);
    CHECK(st.core_fault == 0);
    run_ms(c, 2);
    int before = regs->do_level[OUT_WD];
    run_ms(c, 1);
    CHECK(regs->do_level[OUT_WD] != before);
    ec_core_free(c);
    close_regs();
}

TEST(clock_going_backwards_is_a_core_fault)
{
    open_regs();
    ec_core *c = make_core(1, 0);
    regs->ai[AI_TEMP] = 300;
    regs->ai[AI_PRESS] = 1.0;
    regs->di[DI_LID] = 1;
    run_ms(c, 2);
    ec_core_heartbeat(c);
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_OK);
    run_ms(c, 1);
    CHECK(regs->do_level[OUT_H2] == 1);
    regs->plant_ns -= 3600LL * 1000000000LL; /* the plant restarted its clock: an hour back */
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    CHECK(regs->do_level[OUT_H2] == 0);
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.core_fault & EC_FAULT_CLOCK_BACKWARDS);
    regs->plant_ns = INT64_MAX - 10; /* garbage from the register file: no overflow, no crash */
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    regs->plant_ns = INT64_MIN + 10;
    CHECK(ec_core_run_ticks(c, 1) == EC_OK);
    CHECK(regs->do_level[OUT_H2] == 0 && regs->do_level[OUT_HEATER] == 0);
    ec_core_free(c);
    close_regs();
}

TEST(injected_samples_feed_the_filter_once_and_future_times_are_refused)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "node_temp");
    ch.kind = EC_CH_INJECTED;
    ch.max_age_ms = 100;
    ch.median_n = 5;
    ch.range_lo = -50;
    ch.range_hi = 500;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "hot");
    rc.kind = EC_RULE_HIGH;
    rc.channel = 0;
    rc.threshold = 400;
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    run_ms(c, 1);
    for (int i = 0; i < 5; i++) {
        CHECK(ec_core_inject(c, 0, 20.0, EC_ST_OK, ec_core_now_ns(c), err, sizeof err) == EC_OK);
        run_ms(c, 10);
    }
    /* one wild sample, held by the core for 10 ticks: the median sees it once and rejects it */
    CHECK(ec_core_inject(c, 0, 1000.0, EC_ST_OK, ec_core_now_ns(c), err, sizeof err) == EC_OK);
    run_ms(c, 10);
    ec_value v;
    ec_core_latest(c, &v, 1);
    CHECK(v.value == 20.0 && v.status == EC_ST_OK); /* nor is the spike out of range after the median */
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 0);
    /* a timestamp from another clock, far ahead: refused with the reason, the channel still ages */
    CHECK(ec_core_inject(c, 0, 20.0, EC_ST_OK, ec_core_now_ns(c) + 3600LL * 1000000000LL, err, sizeof err) ==
          EC_ERANGE);
    CHECK(strstr(err, "ahead") != NULL);
    CHECK(ec_core_inject(c, 0, 20.0, EC_ST_OK, INT64_MIN + 1, err, sizeof err) == EC_ERANGE);
    run_ms(c, 150);
    ec_core_latest(c, &v, 1);
    CHECK(v.status & EC_ST_STALE);
    ec_core_free(c);
    close_regs();
}

TEST(latched_trips_survive_a_restart)
{
    open_regs();
    char latch[80];
    snprintf(latch, sizeof latch, "/tmp/ec-test-%d.latch", (int)getpid());
    unlink(latch);
    ec_core *c = make_core(0, 0);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 0);
    regs->ai[AI_TEMP] = 700;
    regs->ai[AI_PRESS] = 1.0;
    run_ms(c, 10);
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 1);
    ec_core_free(c); /* the controller process goes away with the trip latched */

    regs->ai[AI_TEMP] = 20; /* the cause is gone by the time it restarts */
    c = make_core(0, 0);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 1);
    run_ms(c, 5);
    int32_t first = -1;
    ec_core_rules(c, &tripped, NULL, &first);
    CHECK(tripped == 1 && first == 0); /* still tripped: a restart is not a reset */
    ec_event ev[16];
    int n = drain(c, ev, 16);
    const ec_event *e = find_event(ev, n, EC_EV_TRIP);
    CHECK(e != NULL && (e->flags & EC_EVF_RESTORED) && e->rule == 0);
    CHECK(ec_core_request_output(c, OUT_HEATER, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    run_ms(c, 2);
    ec_core_free(c);
    c = make_core(0, 0); /* reset before the exit: nothing comes back */
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 0);
    ec_core_free(c);
    unlink(latch);
    close_regs();
}

TEST(a_stopped_core_stays_stopped)
{
    open_regs();
    regs->clock_mode = SIM_CLOCK_WALL;
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 20;
    regs->ai[AI_PRESS] = 1.0;
    regs->di[DI_LID] = 1;
    CHECK(ec_core_start(c, err, sizeof err) == EC_OK);
    usleep(20000);
    CHECK(ec_core_stop(c) == EC_OK);
    CHECK(ec_core_request_output(c, OUT_H2, 1, err, sizeof err) == EC_ESTATE);
    CHECK(ec_core_run_ticks(c, 1) == EC_ESTATE);
    CHECK(ec_core_start(c, err, sizeof err) == EC_ESTATE);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_ESTATE);
    CHECK(regs->do_level[OUT_H2] == 0);
    ec_core_free(c);
    close_regs();
}

TEST(trips_are_never_crowded_out_of_the_event_ring)
{
    open_regs();
    ec_core *c = make_core(0, 0);
    regs->ai[AI_TEMP] = 20;
    regs->ai[AI_PRESS] = 1.0;
    regs->di[DI_LID] = 0;
    run_ms(c, 1);
    for (int i = 0; i < 5000; i++) { /* a controller retrying a refused request in a loop */
        ec_core_request_output(c, OUT_H2, 1, err, sizeof err);
    }
    regs->ai[AI_TEMP] = 700;
    run_ms(c, 10);
    ec_event *ev = calloc(2048, sizeof *ev);
    int n = drain(c, ev, 2048);
    const ec_event *trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL && trip->rule == 0);
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.events_lost > 0); /* the refusals beyond the ring were counted, not hidden */
    free(ev);
    ec_core_free(c);
    close_regs();
}

TEST(median_and_ema_filter)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "p_median");
    ch.median_n = 5;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    strcpy(ch.name, "p_ema");
    ch.median_n = 1;
    ch.ema_tau_ms = 10;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 1);
    regs->ai[0] = 1.0;
    run_ms(c, 10);
    regs->ai[0] = 100.0; /* one-tick spike */
    run_ms(c, 1);
    regs->ai[0] = 1.0;
    ec_value v[2];
    ec_core_latest(c, v, 2);
    CHECK_NEAR(v[0].value, 1.0, 1e-12); /* median rejects the spike */
    CHECK(v[1].value > 1.0 && v[1].value < 100.0);
    CHECK_NEAR(v[1].value, 1.0 + 99.0 * (1.0 - exp(-0.1)), 1e-9);
    regs->ai[0] = 2.0;
    run_ms(c, 100); /* 10 time constants */
    ec_core_latest(c, v, 2);
    CHECK_NEAR(v[1].value, 2.0, 0.01);
    ec_core_free(c);
    close_regs();
}

TEST(rate_rule_per_minute)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "temp");
    ch.rate_window_ms = 400;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "runaway");
    rc.kind = EC_RULE_RATE_HIGH;
    rc.channel = 0;
    rc.threshold = 600; /* degC/min = 10 degC/s */
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    strcpy(rc.name, "fast_fall");
    rc.kind = EC_RULE_RATE_LOW;
    rc.threshold = -600;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 1);
    double t = 100;
    for (int i = 0; i < 1000; i++) { /* 5 degC/s: fine */
        t += 0.005;
        regs->ai[0] = t;
        run_ms(c, 1);
    }
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 0);
    for (int i = 0; i < 1000; i++) { /* 20 degC/s: runaway */
        t += 0.020;
        regs->ai[0] = t;
        run_ms(c, 1);
    }
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 1);
    ec_core_free(c);
    close_regs();
}

TEST(injected_channel_goes_stale)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "node_temp");
    ch.kind = EC_CH_INJECTED;
    ch.max_age_ms = 0;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_EINVAL); /* an injected channel needs an age */
    ch.max_age_ms = 50;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "node_lost");
    rc.kind = EC_RULE_STALE;
    rc.channel = 0;
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    run_ms(c, 10); /* no data yet, within the start-up grace */
    ec_value v;
    ec_core_latest(c, &v, 1);
    CHECK(v.status == EC_ST_NODATA && isnan(v.value));
    uint64_t tripped = 0;
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 0);
    for (int i = 0; i < 10; i++) {
        CHECK(ec_core_inject(c, 0, 25.0 + i, EC_ST_OK, ec_core_now_ns(c), err, sizeof err) == EC_OK);
        run_ms(c, 10);
    }
    ec_core_latest(c, &v, 1);
    CHECK(v.status == EC_ST_OK);
    CHECK_NEAR(v.value, 34.0, 1e-12);
    CHECK(ec_core_inject(c, 0, 1.0, EC_ST_OK, ec_core_now_ns(c) - 1000000000LL, err, sizeof err) ==
          EC_ERANGE); /* out of order */
    CHECK(ec_core_inject(c, 0, 1.0, 0x80, ec_core_now_ns(c), err, sizeof err) == EC_EINVAL);
    run_ms(c, 55);
    ec_core_latest(c, &v, 1);
    CHECK(v.status & EC_ST_STALE);
    ec_core_rules(c, &tripped, NULL, NULL);
    CHECK(tripped == 1);
    ec_core_free(c);
    close_regs();
}

TEST(bad_arguments_return_codes)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    cc.period_ms = 0;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_ERANGE && c == NULL);
    cc.period_ms = 1;
    cc.sample_ring = 100;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_new(NULL, &c, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_new(&cc, NULL, NULL, 0) == EC_EINVAL);
    ec_core_cfg_default(&cc);
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    CHECK(ec_core_add_driver(c, "nope", "", err, sizeof err) == EC_ENOTFOUND);
    CHECK(ec_core_add_driver(c, "sim", "path=/nonexistent/x", err, sizeof err) == EC_EIO);
    CHECK(strstr(err, "/nonexistent/x") != NULL);
    CHECK(ec_core_add_driver(c, "sim", "", err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_add_driver(c, NULL, NULL, err, sizeof err) == EC_EINVAL);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_EINVAL); /* empty name */
    strcpy(ch.name, "t");
    ch.input = 64;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_ERANGE);
    ch.input = 0;
    ch.driver = 3;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_ENOTFOUND);
    ch.driver = 0;
    ch.kind = EC_CH_THERMOCOUPLE;
    ch.tc_type = 'Q';
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_EINVAL);
    ch.kind = 9;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_EINVAL);
    ch.kind = EC_CH_ANALOG;
    ch.median_n = 4;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_ERANGE);
    ch.median_n = 1;
    ch.scale = NAN;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_EINVAL);
    ch.scale = 1;
    ch.range_lo = 0;
    ch.range_hi = 100;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_EINVAL); /* duplicate */
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "o");
    oc.safe_level = 2;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == EC_EINVAL);
    oc.safe_level = 0;
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    strcpy(oc.name, "o2");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == EC_EINVAL); /* same line */
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "r");
    rc.kind = EC_RULE_HIGH;
    rc.channel = 0;
    rc.threshold = 500; /* outside the channel's 0..100 */
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_ERANGE);
    rc.threshold = 50;
    rc.action = 0;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL);
    rc.action = 2; /* output 1 does not exist */
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_ENOTFOUND);
    rc.action = 1;
    rc.kind = EC_RULE_DIGITAL;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL);
    rc.kind = EC_RULE_DEADMAN;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL);
    ec_permissive_cfg pc = {.output = 5, .channel = 0, .cmp = EC_CMP_LT, .value = 1};
    CHECK(ec_core_add_permissive(c, &pc, err, sizeof err) == EC_ENOTFOUND);
    pc.output = 0;
    pc.cmp = EC_CMP_IN;
    pc.value = 3;
    pc.value2 = 1;
    CHECK(ec_core_add_permissive(c, &pc, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_request_output(c, 7, 1, err, sizeof err) == EC_ENOTFOUND);
    CHECK(ec_core_request_output(c, 0, 2, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_request_output(NULL, 0, 1, err, sizeof err) == EC_EINVAL);
    CHECK(ec_core_set_duty(c, 0, NAN, err, sizeof err) == EC_ERANGE);
    CHECK(ec_core_inject(c, 0, 1.0, 0, 0, err, sizeof err) == EC_EINVAL); /* not an injected channel */
    CHECK(ec_core_inject(c, 99, 1.0, 0, 0, NULL, 0) == EC_ENOTFOUND);
    CHECK(ec_core_reset(c, 40, err, sizeof err) == EC_ENOTFOUND);
    CHECK(ec_core_drain_samples(c, NULL, 4) == EC_EINVAL);
    CHECK(ec_core_drain_events(c, NULL, 4) == EC_EINVAL);
    CHECK(ec_core_latest(c, NULL, 4) == EC_EINVAL);
    CHECK(ec_core_stats(c, NULL) == EC_EINVAL);
    CHECK(ec_core_run_ticks(c, -1) == EC_EINVAL);
    CHECK(ec_core_stop(NULL) == EC_EINVAL);
    CHECK(ec_core_start(NULL, err, sizeof err) == EC_EINVAL);
    ec_core_free(NULL);
    CHECK(ec_core_start(c, err, sizeof err) == EC_OK);
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == EC_ESTATE);
    CHECK(ec_core_run_ticks(c, 1) == EC_ESTATE);
    CHECK(ec_core_start(c, err, sizeof err) == EC_ESTATE);
    ec_core_free(c);
    close_regs();
}

TEST(threaded_sampler_runs_and_counts)
{
    open_regs();
    regs->clock_mode = SIM_CLOCK_WALL;
    ec_core *c = make_core(0, 0);
    CHECK(ec_core_start(c, err, sizeof err) == EC_OK);
    usleep(200000);
    ec_stats st;
    CHECK(ec_core_stats(c, &st) == EC_OK);
    CHECK(st.running == 1);
    CHECK(st.ticks > 100);
    ec_sample *s = calloc(4096, sizeof *s);
    int n = ec_core_drain_samples(c, s, 4096);
    CHECK(n > 100);
    for (int i = 1; i < n; i++) {
        CHECK(s[i].tick == s[i - 1].tick + 1); /* no sample skipped */
    }
    free(s);
    CHECK(ec_core_stop(c) == EC_OK);
    ec_core_stats(c, &st);
    uint64_t hist_total = 0;
    for (int i = 0; i < EC_JITTER_BUCKETS; i++) {
        hist_total += st.jitter_hist[i];
    }
    CHECK(hist_total == st.ticks);
    CHECK(st.running == 0);
    ec_core_free(c);
    close_regs();
}

TEST(digital_median_is_a_majority_vote_and_rate_needs_a_window)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    ec_channel_cfg_default(&ch);
    strcpy(ch.name, "flow_ok");
    ch.kind = EC_CH_DIGITAL;
    ch.median_n = 5;
    ch.rate_window_ms = 0;
    CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 0);
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    strcpy(oc.name, "heater");
    CHECK(ec_core_add_output(c, &oc, err, sizeof err) == 0);
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, "flow_rate");
    rc.kind = EC_RULE_RATE_LOW;
    rc.channel = 0;
    rc.threshold = -1;
    rc.action = 1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL); /* no rate window on the channel */
    CHECK(strstr(err, "rate_window_ms") != NULL);
    regs->di[0] = 1;
    run_ms(c, 10);
    ec_value v;
    for (int i = 0; i < 20; i++) { /* chatter: one tick low in every four */
        regs->di[0] = (i % 4) != 0;
        run_ms(c, 1);
        ec_core_latest(c, &v, 1);
        CHECK(v.value == 1.0);
    }
    regs->di[0] = 0; /* a real change gets through after three of five */
    run_ms(c, 2);
    ec_core_latest(c, &v, 1);
    CHECK(v.value == 1.0);
    run_ms(c, 1);
    ec_core_latest(c, &v, 1);
    CHECK(v.value == 0.0);
    ec_core_free(c);
    close_regs();
}

int main(void)
{
    RUN(high_rule_trips_latches_and_resets);
    RUN(first_out_is_the_first_rule_to_trip);
    RUN(non_latched_rule_clears_with_hysteresis);
    RUN(deadman_trips_without_heartbeat);
    RUN(keepalive_drops_unrefreshed_output);
    RUN(permissive_refuses_with_reason_and_drops);
    RUN(duty_is_burst_fire_over_whole_cycles);
    RUN(watchdog_line_toggles_every_tick);
    RUN(sensor_fault_is_never_a_number_and_trips);
    RUN(out_of_range_signal_trips_a_high_rule);
    RUN(plant_clock_stopping_makes_inputs_stale);
    RUN(clock_going_backwards_is_a_core_fault);
    RUN(injected_samples_feed_the_filter_once_and_future_times_are_refused);
    RUN(latched_trips_survive_a_restart);
    RUN(a_stopped_core_stays_stopped);
    RUN(trips_are_never_crowded_out_of_the_event_ring);
    RUN(median_and_ema_filter);
    RUN(rate_rule_per_minute);
    RUN(injected_channel_goes_stale);
    RUN(bad_arguments_return_codes);
    RUN(digital_median_is_a_majority_vote_and_rate_needs_a_window);
    RUN(threaded_sampler_runs_and_counts);
    CTEST_END();
}
