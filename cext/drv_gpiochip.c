/* drv_gpiochip.c - STUB, replaced by the real driver. */
#include "driver.h"
#include "edge_core.h"
static int stub_open(ec_driver *d, const char *params, char *err, size_t errlen)
{
    ec_set_err(err, errlen, "gpiochip driver not implemented yet");
    return EC_EIO;
}
const ec_driver_ops ec_driver_gpiochip = {"gpiochip", stub_open, NULL, NULL, NULL, NULL};
