/*
 * layers_station.h - the station of the layers-of-defence tests (test_layers.c, test_review.c):
 * a burst-fire heater behind a safety contactor K1 and a watchdog line; control and safety
 * thermocouples, heater current, contactor and watchdog-relay feedbacks, a reset button.
 * Include after sim_fixture.h. make_core() adds no rules: each test adds the ones it attacks.
 */
#ifndef LAYERS_STATION_H
#define LAYERS_STATION_H

#include <string.h>

#include "sim_fixture.h"

enum { AI_TEMP = 0, AI_SAFETY = 1, AI_CURRENT = 2, DI_CONTACTOR = 0, DI_RELAY = 1, DI_RESET = 2 };
enum { CH_TEMP = 0, CH_SAFETY = 1, CH_CURRENT = 2, CH_CONTACTOR = 3, CH_RELAY = 4, CH_RESET = 5 };
enum { OUT_HEATER = 0, OUT_K1 = 1, OUT_WD = 2 };

/* heater (burst fire) behind a safety contactor K1, a watchdog line; TCs, heater current, feedbacks */
static SIM_FIXTURE_UNUSED ec_core *make_core(const ec_core_cfg *extra)
{
    ec_core_cfg cc;
    ec_core_cfg_default(&cc);
    if (extra != NULL) {
        cc = *extra;
    }
    cc.reset_channel = CH_RESET;
    cc.watchdog_output = OUT_WD;
    ec_core *c = NULL;
    CHECK(ec_core_new(&cc, &c, err, sizeof err) == EC_OK);
    add_sim_driver(c);
    ec_channel_cfg ch;
    static const char *analog[] = {"chamber_temp", "chamber_temp_safety", "heater_current"};
    for (int i = 0; i < 3; i++) {
        ec_channel_cfg_default(&ch);
        strcpy(ch.name, analog[i]);
        ch.kind = EC_CH_ANALOG;
        ch.input = i;
        ch.range_lo = i == AI_CURRENT ? -1 : -50;
        ch.range_hi = i == AI_CURRENT ? 52 : 1200;
        CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == i);
    }
    static const char *digital[] = {"contactor_closed", "watchdog_relay_ok", "reset_button"};
    for (int i = 0; i < 3; i++) {
        ec_channel_cfg_default(&ch);
        strcpy(ch.name, digital[i]);
        ch.kind = EC_CH_DIGITAL;
        ch.input = i;
        CHECK(ec_core_add_channel(c, &ch, err, sizeof err) == 3 + i);
    }
    ec_output_cfg oc;
    ec_output_cfg_default(&oc);
    static const char *outs[] = {"heater", "safety_contactor", "watchdog_line"};
    for (int i = 0; i < 3; i++) {
        strcpy(oc.name, outs[i]);
        oc.line = i;
        CHECK(ec_core_add_output(c, &oc, err, sizeof err) == i);
    }
    return c;
}

static SIM_FIXTURE_UNUSED ec_rule_cfg rule_of(const char *name, int kind, int channel, double threshold, double debounce_ms)
{
    ec_rule_cfg rc;
    ec_rule_cfg_default(&rc);
    strcpy(rc.name, name);
    rc.kind = kind;
    rc.channel = channel;
    rc.threshold = threshold;
    rc.debounce_ms = debounce_ms;
    rc.action = (1u << OUT_HEATER) | (1u << OUT_K1);
    return rc;
}

static SIM_FIXTURE_UNUSED const ec_event *find_event(const ec_event *ev, int n, int kind)
{
    for (int i = 0; i < n; i++) {
        if (ev[i].kind == kind) {
            return &ev[i];
        }
    }
    return NULL;
}

static SIM_FIXTURE_UNUSED uint64_t tripped_rules(ec_core *c)
{
    uint64_t t = 0;
    CHECK(ec_core_rules(c, &t, NULL, NULL) == EC_OK);
    return t;
}

#endif
