/*
 * max318xx.h - register layouts and pure frame decoding for the Maxim MAX31855 and
 * MAX31856 thermocouple-to-digital converters (internal to cext/).
 *
 * drv_spidev.c reads the chips; these functions only turn bytes into degrees and
 * EC_ST_* status bits, so the C tests can feed synthesised frames straight in.
 * No I/O, no state, no allocation.
 *
 * Layouts (from the Maxim datasheets):
 *
 * MAX31855, one 32-bit read-only frame, first bit out = D31:
 *   D31..D18 thermocouple temperature, 14-bit two's complement, 0.25 degC/LSB
 *   D17      reserved, always 0
 *   D16      fault: 1 when any of SCV, SCG, OC is active
 *   D15..D4  internal (cold-junction) temperature, 12-bit two's complement, 0.0625 degC/LSB
 *   D3       reserved, always 0
 *   D2 SCV (short to VCC), D1 SCG (short to GND), D0 OC (open circuit)
 *   The thermocouple value is computed by the chip with a linear Seebeck coefficient
 *   for the part's type (MAX31855K, J, N, T, E, R, S): it is not NIST-linearised.
 *
 * MAX31856, registers read at address A (A7 = 0) and written at A | 0x80, the address
 * auto-incrementing while CS stays low:
 *   00 CR0  7 CMODE (1 = automatic conversion), 6 1SHOT, 5:4 OCFAULT (open-circuit
 *           detection: 00 off, 01 Rs < 5k, 10 / 11 for 5k..40k with tau < / > 2 ms),
 *           3 CJ (1 = cold-junction sensor off), 2 FAULT (0 = comparator mode: SR
 *           follows the condition; 1 = interrupt mode: latched), 1 FAULTCLR,
 *           0 50/60 Hz (1 = 50 Hz rejection, 0 = 60 Hz, the power-on value)
 *   01 CR1  6:4 AVGSEL (000 = 1 sample, 001 = 2, 010 = 4, 011 = 8, 1xx = 16),
 *           3:0 TC TYPE (B=0 E=1 J=2 K=3 N=4 R=5 S=6 T=7; 8/12 voltage modes)
 *   02 MASK 5:0 mask the FAULT pin for SR bits 5:0 (1 = masked; power-on 0xFF)
 *   03..09 fault thresholds and the cold-junction offset (left at power-on values)
 *   0A CJTH, 0B CJTL: cold junction, 14-bit two's complement in bits 15..2,
 *           0.015625 degC/LSB
 *   0C LTCBH, 0D LTCBM, 0E LTCBL: linearised thermocouple temperature, 19-bit two's
 *           complement in bits 23..5, 0.0078125 degC/LSB
 *   0F SR   7 CJ range, 6 TC range, 5 CJ high, 4 CJ low, 3 TC high, 2 TC low,
 *           1 OVUV (input over/under voltage), 0 OPEN (open thermocouple)
 */
#ifndef EC_MAX318XX_H
#define EC_MAX318XX_H

#include <stdint.h>

/* ---- MAX31855 frame bits ---- */
#define EC_MAX31855_OC (1u << 0)
#define EC_MAX31855_SCG (1u << 1)
#define EC_MAX31855_SCV (1u << 2)
#define EC_MAX31855_RES3 (1u << 3)
#define EC_MAX31855_FAULT (1u << 16)
#define EC_MAX31855_RES17 (1u << 17)

/* the chip's specified operating range, used to flag an implausible cold junction */
#define EC_MAX318XX_CJ_MIN_C (-55.0)
#define EC_MAX318XX_CJ_MAX_C 125.0

/* ---- MAX31856 registers ---- */
#define EC_MAX31856_WRITE 0x80
#define EC_MAX31856_REG_CR0 0x00
#define EC_MAX31856_REG_CR1 0x01
#define EC_MAX31856_REG_MASK 0x02
#define EC_MAX31856_REG_CJTH 0x0A
#define EC_MAX31856_REG_SR 0x0F
#define EC_MAX31856_NREGS 16

#define EC_MAX31856_CR0_CMODE 0x80
#define EC_MAX31856_CR0_1SHOT 0x40
#define EC_MAX31856_CR0_OCFAULT_SHIFT 4
#define EC_MAX31856_CR0_OCFAULT_MASK 0x30
#define EC_MAX31856_CR0_CJ 0x08
#define EC_MAX31856_CR0_FAULT 0x04
#define EC_MAX31856_CR0_FAULTCLR 0x02
#define EC_MAX31856_CR0_50HZ 0x01

#define EC_MAX31856_CR1_AVGSEL_SHIFT 4
#define EC_MAX31856_CR1_AVGSEL_MASK 0x70
#define EC_MAX31856_CR1_TYPE_MASK 0x0F

#define EC_MAX31856_SR_OPEN 0x01
#define EC_MAX31856_SR_OVUV 0x02
#define EC_MAX31856_SR_TCLOW 0x04
#define EC_MAX31856_SR_TCHIGH 0x08
#define EC_MAX31856_SR_CJLOW 0x10
#define EC_MAX31856_SR_CJHIGH 0x20
#define EC_MAX31856_SR_TCRANGE 0x40
#define EC_MAX31856_SR_CJRANGE 0x80

/* MASK bits 5:0 follow SR bits 5:0; bits 7:6 are not maskable */
#define EC_MAX31856_MASK_BITS 0x3F

/*
 * MAX31855: decode one frame (the first byte received is bits 31..24).
 * tc_status: EC_ST_FAULT when D16 or any of SCV/SCG/OC is set; EC_ST_RANGE as well
 *   when the cold junction is outside -55..+125 degC (the compensation is then not
 *   trustworthy).
 * cj_status: EC_ST_RANGE when the cold junction is outside -55..+125 degC.
 * Returns EC_OK for a frame a working chip can send, EC_EIO (both statuses
 * EC_ST_FAULT) when it cannot be one: a reserved bit set (e.g. 0xFFFFFFFF, MISO
 * floating high) or all 32 bits zero (MISO stuck low; a real chip reads exactly
 * 0.00 / 0.0000 degC together only in an ice bath), EC_EINVAL for a NULL pointer.
 * The temperatures are always written from the bits, whatever the status.
 */
int ec_max31855_decode(uint32_t frame, double *tc_c, double *cj_c, uint32_t *tc_status,
                       uint32_t *cj_status);

/*
 * MAX31856: decode registers 0x0A..0x0F (CJTH, CJTL, LTCBH, LTCBM, LTCBL, SR).
 * tc_status: EC_ST_FAULT for OPEN or OVUV; EC_ST_RANGE for TC range, TC high, TC low
 *   and for CJ range (the linearisation used an out-of-range cold junction).
 * cj_status: EC_ST_RANGE for CJ range, CJ high, CJ low.
 * Returns EC_OK, or EC_EINVAL for a NULL pointer.
 */
int ec_max31856_decode(const uint8_t regs[6], double *tc_c, double *cj_c, uint32_t *tc_status,
                       uint32_t *cj_status);

/* CR1 TC TYPE code for 'B','E','J','K','N','R','S','T' (either case), or EC_EINVAL */
int ec_max31856_tc_code(char tc_type);

/* CR0 for automatic conversion, comparator fault mode, cold-junction sensor on:
 * mains_hz 50 or 60, oc_mode 0..3 (OCFAULT). EC_OK or EC_EINVAL. */
int ec_max31856_cr0(int mains_hz, int oc_mode, uint8_t *cr0);

/* CR1: averaging avg = 1, 2, 4, 8 or 16 samples and the thermocouple type. EC_OK or EC_EINVAL. */
int ec_max31856_cr1(char tc_type, int avg, uint8_t *cr1);

#endif
