/*
 * sida's data-movement and reduction kernels for the `native` tfjs backend, compiled into the
 * same library as sida_kernels.c.
 */
#include <stdint.h>
