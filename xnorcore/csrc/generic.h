/* The "generic" variant: portable C for any CPU (portable.h), and the base
 * versions of the real-valued layers (real_layers.h, 16-byte vectors). */
#ifndef XNORCORE_CSRC_GENERIC_H
#define XNORCORE_CSRC_GENERIC_H

#include "common.h"
#include "real_layers.h"

#define XNOR_SFX generic
#define XNOR_ATTR
#include "portable.h"
#undef XNOR_SFX
#undef XNOR_ATTR

XNOR_INPUT_SUMS(xnor_input_sums_generic, , 16)
XNOR_SIGNED_SUMS(xnor_signed_sums_generic, )
XNOR_REAL_POOL(xnor_real_pool_generic, , 16)

#endif /* XNORCORE_CSRC_GENERIC_H */
