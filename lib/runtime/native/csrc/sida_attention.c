/*
 * sida's attention kernels for the `native` tfjs backend (softmax over the last axis and its
 * gradient), compiled into the same library as sida_kernels.c.
 */
#include <stdint.h>
