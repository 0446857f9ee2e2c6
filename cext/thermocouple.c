/* thermocouple.c - STUB, replaced by the NIST ITS-90 implementation. */
#include "edge_core.h"
int ec_tc_celsius_to_emf(char tc_type, double t_c, double *emf_mv) { return EC_EINVAL; }
int ec_tc_emf_to_celsius(char tc_type, double emf_mv, double *t_c) { return EC_EINVAL; }
int ec_tc_compensated(char tc_type, double emf_mv, double cj_c, double *t_c) { return EC_EINVAL; }
int ec_tc_range(char tc_type, double *t_min, double *t_max, double *emf_min, double *emf_max) { return EC_EINVAL; }
int ec_tc_celsius_to_emf_batch(char tc_type, const double *t_c, double *emf_mv, uint8_t *status, size_t n) { return EC_EINVAL; }
int ec_tc_emf_to_celsius_batch(char tc_type, const double *emf_mv, double cj_c, double *t_c, uint8_t *status, size_t n) { return EC_EINVAL; }
