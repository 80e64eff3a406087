/* The "scalar" variant: the portable C of portable.h compiled for the POPCNT
 * instruction (x86-64 only).  Its real-valued layers are the generic ones. */
#ifndef XNORCORE_CSRC_SCALAR_H
#define XNORCORE_CSRC_SCALAR_H

#include "common.h"

#if XNOR_X86
#define XNOR_SFX scalar
#define XNOR_ATTR __attribute__((target("popcnt")))
#include "portable.h"
#undef XNOR_SFX
#undef XNOR_ATTR
#endif

#endif /* XNORCORE_CSRC_SCALAR_H */
