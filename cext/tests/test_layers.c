/* test_layers.c - the layers of defence of issue 13, on the sim driver: output feedback
 * (DISCREPANCY), two channels that must agree (AGREE), the watchdog relay's proof test,
 * the tick-gap fault, the dead-man fed by the scan thread only, and local vs remote reset.
 *
 * Like test_core.c the register file runs in plant-clock mode and the core is stepped with
 * ec_core_run_ticks(), so timings are exact; the tick gap needs the real sampler thread.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#define SIM_FIXTURE_NAME "layers"
#include "sim_fixture.h"
#include "layers_station.h"

TEST(discrepancy_trips_on_a_welded_output_and_a_dead_one)
{
    open_regs();
    ec_core *c = make_core(NULL);
    ec_rule_cfg rc = rule_of("contactor_feedback", EC_RULE_DISCREPANCY, CH_CONTACTOR, 0, 50);
    rc.output = OUT_K1;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    run_ms(c, 10);
    CHECK(tripped_rules(c) == 0); /* written 0, reads 0 */
    regs->di[DI_CONTACTOR] = 1;   /* welded: closed while written open */
    run_ms(c, 49);
    CHECK(tripped_rules(c) == 0);
    run_ms(c, 2);
    CHECK(tripped_rules(c) == 1);
    ec_event ev[64];
    int n = ec_core_drain_events(c, ev, 64);
    const ec_event *trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL);
    if (trip) {
        CHECK(trip->output == OUT_K1 && trip->channel == CH_CONTACTOR && trip->aux == 0);
        CHECK_NEAR(trip->value, 1, 0);
    }
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_ECONDITION);
    regs->di[DI_CONTACTOR] = 0;
    run_ms(c, 1);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    /* commanded closed, never closes (coil open circuit) */
    CHECK(ec_core_request_output(c, OUT_K1, 1, err, sizeof err) == EC_OK);
    run_ms(c, 50);
    CHECK(tripped_rules(c) == 0 && regs->do_level[OUT_K1] == 1);
    run_ms(c, 2);
    CHECK(tripped_rules(c) == 1 && regs->do_level[OUT_K1] == 0);
    n = ec_core_drain_events(c, ev, 64);
    trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL && trip->aux == 1 && trip->value == 0);
    ec_core_free(c);
    close_regs();
}

TEST(discrepancy_on_analog_feedback_ignores_burst_fire_and_fails_safe)
{
    open_regs();
    ec_core *c = make_core(NULL);
    ec_rule_cfg rc = rule_of("heater_feedback", EC_RULE_DISCREPANCY, CH_CURRENT, 5, 200);
    rc.output = OUT_HEATER;
    rc.hysteresis = 1;
    rc.latch = 0;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    /* burst fire at 50 %: the level changes every cycle, the current follows late; never trips */
    CHECK(ec_core_set_duty(c, OUT_HEATER, 0.5, err, sizeof err) == EC_OK);
    for (int i = 0; i < 2000; i++) {
        regs->ai[AI_CURRENT] = (i / 20) % 2 ? 8.6 : 0.0; /* mean current, behind the command */
        run_ms(c, 1);
        CHECK(ec_core_set_duty(c, OUT_HEATER, 0.5, err, sizeof err) == EC_OK);
    }
    CHECK(tripped_rules(c) == 0);
    /* full on, no current (a blown fuse, an open contactor) for 200 ms */
    ec_event ev[64];
    ec_core_drain_events(c, ev, 64);
    CHECK(ec_core_set_duty(c, OUT_HEATER, 1.0, err, sizeof err) == EC_OK);
    regs->ai[AI_CURRENT] = 0.2;
    run_ms(c, 150);
    CHECK(tripped_rules(c) == 0 && regs->do_level[OUT_HEATER] == 1);
    run_ms(c, 100);
    int n = ec_core_drain_events(c, ev, 64);
    const ec_event *trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL && trip->aux == 1 && trip->output == OUT_HEATER);
    CHECK(regs->do_level[OUT_HEATER] == 0);
    /* heater off: 4.5 A reads "off"; once above 5 A it reads "on" down to 4 A (hysteresis) */
    regs->ai[AI_CURRENT] = 4.5;
    run_ms(c, 250);
    CHECK(tripped_rules(c) == 0);
    regs->ai[AI_CURRENT] = 6.0;
    run_ms(c, 100);
    regs->ai[AI_CURRENT] = 4.5;
    run_ms(c, 99);
    CHECK(tripped_rules(c) == 0);
    run_ms(c, 2);
    CHECK(tripped_rules(c) == 1);
    regs->ai[AI_CURRENT] = 3.9;
    run_ms(c, 1);
    CHECK(tripped_rules(c) == 0);
    /* written off, 17 A flowing (welded SSR): trips; a broken CT trips sensor-bad */
    regs->ai[AI_CURRENT] = 17.3;
    run_ms(c, 201);
    CHECK(tripped_rules(c) == 1);
    regs->ai[AI_CURRENT] = 0.0;
    run_ms(c, 1);
    CHECK(tripped_rules(c) == 0);
    ec_core_drain_events(c, ev, 64);
    regs->ai_fault[AI_CURRENT] = 1;
    run_ms(c, 201);
    n = ec_core_drain_events(c, ev, 64);
    trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL && (trip->flags & EC_EVF_SENSOR_BAD));
    ec_core_free(c);
    close_regs();
}

TEST(agree_trips_when_two_channels_part)
{
    open_regs();
    ec_core *c = make_core(NULL);
    ec_rule_cfg rc = rule_of("chamber_tc_disagree", EC_RULE_AGREE, CH_TEMP, 60, 100);
    rc.channel2 = CH_SAFETY;
    rc.hysteresis = 10;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    regs->ai[AI_TEMP] = 500;
    regs->ai[AI_SAFETY] = 550;
    run_ms(c, 300);
    CHECK(tripped_rules(c) == 0);
    regs->ai[AI_TEMP] = 480; /* 70 apart for 99 ms, then back */
    run_ms(c, 99);
    regs->ai[AI_TEMP] = 500;
    run_ms(c, 50);
    CHECK(tripped_rules(c) == 0);
    regs->ai[AI_TEMP] = 620; /* the control TC reads high by 70: either sign */
    run_ms(c, 101);
    CHECK(tripped_rules(c) == 1);
    ec_event ev[64];
    int n = ec_core_drain_events(c, ev, 64);
    const ec_event *trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL);
    if (trip) {
        CHECK(trip->channel == CH_TEMP && trip->aux == CH_SAFETY);
        CHECK_NEAR(trip->value, 70, 1e-9);
        CHECK_NEAR(trip->threshold, 60, 0);
    }
    regs->ai[AI_TEMP] = 603; /* 53 apart: inside the band, not below band - hysteresis */
    run_ms(c, 2);
    CHECK(ec_core_reset(c, 0, err, sizeof err) == EC_ECONDITION);
    regs->ai[AI_TEMP] = 590;
    run_ms(c, 2);
    CHECK(ec_core_reset(c, 0, err, sizeof err) == EC_OK);
    regs->ai_fault[AI_SAFETY] = 1; /* one side broken: they cannot be shown to agree */
    run_ms(c, 101);
    n = ec_core_drain_events(c, ev, 64);
    trip = find_event(ev, n, EC_EV_TRIP);
    CHECK(trip != NULL && (trip->flags & EC_EVF_SENSOR_BAD));
    ec_core_free(c);
    close_regs();
}

TEST(pair_rules_are_validated)
{
    open_regs();
    ec_core *c = make_core(NULL);
    ec_rule_cfg rc = rule_of("fb", EC_RULE_DISCREPANCY, CH_CONTACTOR, 0, 0);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_ENOTFOUND); /* no output */
    CHECK(strstr(err, "needs its output") != NULL);
    rc.output = OUT_WD;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL);
    CHECK(strstr(err, "watchdog line") != NULL);
    rc.output = OUT_K1;
    rc.threshold = 0.5;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL); /* digital feedback takes no threshold */
    rc = rule_of("fb", EC_RULE_DISCREPANCY, CH_CURRENT, 80, 0);
    rc.output = OUT_HEATER;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_ERANGE); /* outside the CT's range */
    rc.local_reset_only = 2;
    rc.threshold = 5;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL);
    rc = rule_of("ag", EC_RULE_AGREE, CH_TEMP, 60, 0);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_ENOTFOUND); /* no channel2 */
    CHECK(strstr(err, "second channel") != NULL);
    rc.channel2 = CH_TEMP;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL);
    rc.channel2 = CH_CONTACTOR;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_EINVAL); /* digital */
    rc.channel2 = CH_SAFETY;
    rc.threshold = 0;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_ERANGE);
    rc.threshold = 60;
    rc.hysteresis = 60;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == EC_ERANGE);
    rc.hysteresis = 5;
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    ec_core_free(c);
    /* the core config: feedback only with a watchdog line, a tick gap not below the period */
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    CHECK(cc.watchdog_feedback == -1 && cc.max_tick_gap_ms == 0 && cc.allow_remote_reset == 0);
    cc.watchdog_feedback = 1;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_EINVAL);
    ec_core_cfg_default(&cc);
    cc.max_tick_gap_ms = 0.5;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_ERANGE);
    ec_core_cfg_default(&cc);
    cc.watchdog_feedback = CH_TEMP; /* analog: refused at start */
    c = make_core(&cc);
    CHECK(ec_core_start(c, err, sizeof err) == EC_EINVAL);
    CHECK(strstr(err, "watchdog_feedback") != NULL);
    ec_core_free(c);
    close_regs();
}

/* a watchdog relay: energised while the line toggled within the last 20 ms (a charge pump) */
typedef struct relay {
    int last_line;
    int64_t last_toggle;
    int welded;  /* contact stuck: reads energised whatever */
    int dead;    /* coil open: never energises */
} relay;

static void relay_step(relay *r)
{
    int line = regs->do_level[OUT_WD];
    if (line != r->last_line) {
        r->last_line = line;
        r->last_toggle = regs->plant_ns;
    }
    int energised = regs->plant_ns - r->last_toggle < 20000000LL;
    regs->di[DI_RELAY] = (uint8_t)(r->welded || (energised && !r->dead));
}

static void run_relay_ms(ec_core *c, relay *r, int ms, int *line_changes)
{
    for (int i = 0; i < ms; i++) {
        regs->plant_ns += 1000000LL;
        CHECK(ec_core_run_ticks(c, 1) == EC_OK);
        int before = r->last_line;
        relay_step(r);
        if (line_changes != NULL) {
            *line_changes += r->last_line != before;
        }
    }
}

TEST(watchdog_proof_test_holds_outputs_until_the_relay_is_proved)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    cc.watchdog_feedback = CH_RELAY;
    ec_core *c = make_core(&cc);
    relay r = {.last_line = 0, .last_toggle = regs->plant_ns}; /* energised from a previous run */
    regs->di[DI_RELAY] = 1;
    int changes = 0;
    run_relay_ms(c, &r, 1, &changes);
    CHECK(ec_core_request_output(c, OUT_K1, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "watchdog proof test running") != NULL);
    run_relay_ms(c, &r, 15, &changes);
    CHECK(changes == 0); /* held still until the relay drops */
    CHECK(regs->di[DI_RELAY] == 1);
    /* it drops at 20 ms, is seen dropped for EC_WATCHDOG_PROOF_STEADY ticks, then the line toggles and it
     * picks up; seen up for as many ticks, the relay is proved */
    run_relay_ms(c, &r, 10 + EC_WATCHDOG_PROOF_STEADY, &changes);
    CHECK(changes > 0);
    CHECK(regs->di[DI_RELAY] == 1);
    run_relay_ms(c, &r, EC_WATCHDOG_PROOF_STEADY, NULL);
    CHECK(ec_core_request_output(c, OUT_K1, 1, err, sizeof err) == EC_OK);
    run_relay_ms(c, &r, 2, NULL);
    CHECK(regs->do_level[OUT_K1] == 1);
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.core_fault == 0);
    ec_core_free(c);
    close_regs();
}

TEST(a_welded_or_dead_watchdog_relay_is_a_core_fault)
{
    open_regs();
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    cc.watchdog_feedback = CH_RELAY;
    ec_core *c = make_core(&cc);
    relay r = {.welded = 1};
    regs->di[DI_RELAY] = 1;
    int changes = 0;
    run_relay_ms(c, &r, EC_WATCHDOG_PROOF_MS, &changes);
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.core_fault == 0 && changes == 0);
    run_relay_ms(c, &r, 2, &changes);
    ec_core_stats(c, &st);
    CHECK(st.core_fault == EC_FAULT_WATCHDOG_PROOF && changes == 0);
    CHECK(ec_core_request_output(c, OUT_K1, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "proof test") != NULL);
    ec_core_cfg_default(&cc);
    /* the relay is replaced; a local reset runs the test again and it passes */
    r.welded = 0;
    run_relay_ms(c, &r, 5, NULL);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    run_relay_ms(c, &r, 30 + 2 * EC_WATCHDOG_PROOF_STEADY, NULL);
    CHECK(ec_core_request_output(c, OUT_K1, 1, err, sizeof err) == EC_OK);
    ec_core_free(c);

    /* a relay that never picks up: the toggling step times out */
    c = make_core(&(ec_core_cfg){.period_ms = 1, .sample_ring = 64, .event_ring = 64, .reset_channel = -1,
                                 .watchdog_output = -1, .watchdog_feedback = CH_RELAY});
    relay dead = {.dead = 1};
    regs->di[DI_RELAY] = 0;
    changes = 0;
    run_relay_ms(c, &dead, EC_WATCHDOG_PROOF_MS, &changes);
    ec_core_stats(c, &st);
    CHECK(st.core_fault == 0);
    run_relay_ms(c, &dead, EC_WATCHDOG_PROOF_STEADY + 2, &changes); /* the drop was proved after STEADY ticks */
    ec_core_stats(c, &st);
    CHECK(st.core_fault == EC_FAULT_WATCHDOG_PROOF && changes > 0);
    ec_event ev[64];
    int n = ec_core_drain_events(c, ev, 64);
    const ec_event *f = find_event(ev, n, EC_EV_CORE_FAULT);
    CHECK(f != NULL && f->aux == EC_FAULT_WATCHDOG_PROOF);
    ec_core_free(c);
    close_regs();
}

static void *beat(void *arg) { return (void *)(intptr_t)ec_core_heartbeat((ec_core *)arg); }

static int heartbeat_from_helper(ec_core *c)
{
    pthread_t t;
    void *rc = NULL;
    CHECK(pthread_create(&t, NULL, beat, c) == 0);
    pthread_join(t, &rc);
    return (int)(intptr_t)rc;
}

TEST(only_the_scan_thread_feeds_the_deadman)
{
    open_regs();
    ec_core *c = make_core(NULL);
    ec_rule_cfg rc = rule_of("controller_deadman", EC_RULE_DEADMAN, -1, 100, 0);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    run_ms(c, 1); /* this thread steps the core: it is the scan */
    for (int i = 0; i < 30; i++) {
        CHECK(heartbeat_from_helper(c) == EC_ESTATE);
        run_ms(c, 10);
    }
    CHECK(tripped_rules(c) == 1); /* the helper's beats fed nothing */
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_ECONDITION);
    CHECK(ec_core_heartbeat(c) == EC_OK);
    run_ms(c, 1);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    ec_core_free(c);

    /* a started core: the thread that called start */
    regs->clock_mode = SIM_CLOCK_WALL;
    c = make_core(NULL);
    CHECK(ec_core_start(c, err, sizeof err) == EC_OK);
    CHECK(ec_core_heartbeat(c) == EC_OK);
    CHECK(heartbeat_from_helper(c) == EC_ESTATE);
    ec_core_free(c);
    close_regs();
}

/* a remote reset of a trip restored from the latch file says, as the local one does, that the rule
 * has had no verdict on fresh data yet (not that it "still holds" at a stale value) */
TEST(remote_reset_says_a_restored_trip_is_not_yet_evaluated)
{
    open_regs();
    char latch[80];
    snprintf(latch, sizeof latch, "/tmp/ec-layers-%d.latch", (int)getpid());
    unlink(latch);
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    cc.allow_remote_reset = 1;
    ec_core *c = make_core(&cc);
    ec_rule_cfg rc = rule_of("chamber_overtemp", EC_RULE_HIGH, CH_TEMP, 650, 0);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 0);
    regs->ai[AI_TEMP] = 700;
    run_ms(c, 2);
    CHECK(tripped_rules(c) == 1);
    ec_core_free(c); /* killed with the trip latched */

    c = make_core(&cc);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    CHECK(ec_core_set_latch_file(c, latch, err, sizeof err) == 1);
    err[0] = '\0';
    CHECK(ec_core_reset_remote(c, -1, err, sizeof err) == EC_ECONDITION);
    CHECK(strstr(err, "'chamber_overtemp' not yet evaluated on fresh data") != NULL);
    CHECK(tripped_rules(c) == 1);
    ec_core_free(c);
    unlink(latch);
    close_regs();
}

TEST(remote_reset_is_told_apart_from_local)
{
    open_regs();
    ec_core *c = make_core(NULL); /* allow_remote_reset = 0 */
    ec_rule_cfg rc = rule_of("chamber_overtemp", EC_RULE_HIGH, CH_TEMP, 650, 0);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    regs->ai[AI_TEMP] = 700;
    run_ms(c, 2);
    regs->ai[AI_TEMP] = 600;
    run_ms(c, 2);
    CHECK(ec_core_reset_remote(c, -1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "allow_remote_reset") != NULL && tripped_rules(c) == 1);
    CHECK(ec_core_reset(c, -1, err, sizeof err) == EC_OK);
    ec_core_free(c);

    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    cc.allow_remote_reset = 1;
    c = make_core(&cc);
    CHECK(ec_core_add_rule(c, &rc, err, sizeof err) == 0);
    ec_rule_cfg lim = rule_of("limiter_tripped", EC_RULE_DIGITAL, CH_CONTACTOR, 1, 0);
    lim.local_reset_only = 1;
    CHECK(ec_core_add_rule(c, &lim, err, sizeof err) == 1);
    regs->ai[AI_TEMP] = 700;
    regs->di[DI_CONTACTOR] = 0;
    run_ms(c, 2);
    regs->ai[AI_TEMP] = 600;
    regs->di[DI_CONTACTOR] = 1;
    run_ms(c, 2);
    CHECK(tripped_rules(c) == 3);
    CHECK(ec_core_reset_remote(c, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "limiter_tripped") != NULL && strstr(err, "locally") != NULL);
    CHECK(ec_core_reset_remote(c, -1, err, sizeof err) == EC_EREFUSED); /* resets the other, names this one */
    CHECK(tripped_rules(c) == 2);
    ec_event ev[64];
    int n = ec_core_drain_events(c, ev, 64);
    const ec_event *reset = find_event(ev, n, EC_EV_RESET);
    CHECK(reset != NULL && reset->rule == 0 && (reset->flags & EC_EVF_REMOTE));
    CHECK(ec_core_reset(c, 1, err, sizeof err) == EC_OK); /* local */
    CHECK(tripped_rules(c) == 0);
    ec_core_free(c);
    close_regs();
}

static volatile sig_atomic_t dummy;

TEST(a_stalled_sampler_is_a_tick_gap_core_fault)
{
    open_regs();
    regs->clock_mode = SIM_CLOCK_WALL;
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    cc.max_tick_gap_ms = 100;
    ec_core *c = make_core(&cc);
    CHECK(ec_core_start(c, err, sizeof err) == EC_OK);
    usleep(50000);
    /* the whole process stopped for 400 ms (a swap storm, a debugger): a child stops and continues us */
    pid_t parent = getpid();
    pid_t child = fork();
    if (child == 0) {
        kill(parent, SIGSTOP);
        usleep(400000);
        kill(parent, SIGCONT);
        _exit(0);
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0) {
        dummy++;
    }
    usleep(20000);
    ec_stats st;
    ec_core_stats(c, &st);
    CHECK(st.core_fault & EC_FAULT_TICK_GAP);
    CHECK(ec_core_request_output(c, OUT_K1, 1, err, sizeof err) == EC_EREFUSED);
    CHECK(strstr(err, "max_tick_gap_ms") != NULL);
    ec_core_free(c);
    close_regs();
}

int main(void)
{
    RUN(discrepancy_trips_on_a_welded_output_and_a_dead_one);
    RUN(discrepancy_on_analog_feedback_ignores_burst_fire_and_fails_safe);
    RUN(agree_trips_when_two_channels_part);
    RUN(pair_rules_are_validated);
    RUN(watchdog_proof_test_holds_outputs_until_the_relay_is_proved);
    RUN(a_welded_or_dead_watchdog_relay_is_a_core_fault);
    RUN(only_the_scan_thread_feeds_the_deadman);
    RUN(remote_reset_is_told_apart_from_local);
    RUN(remote_reset_says_a_restored_trip_is_not_yet_evaluated);
    RUN(a_stalled_sampler_is_a_tick_gap_core_fault);
    CTEST_END();
}
