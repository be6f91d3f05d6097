/*
 * sida's MPI shim: the few collectives of data-parallel training (lib/runtime/mpi.ts), compiled
 * on first use with `mpicc` and called through Deno FFI. Every function returns an MPI error
 * code (MPI_SUCCESS = 0) unless noted; errors are returned, not fatal (MPI_ERRORS_RETURN).
 * Counts are 64-bit and split into chunks of at most 2^28 elements for MPI's `int` counts.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SIDA_MPI_VERSION 1
#define CHUNK ((int64_t)1 << 28)

int sida_mpi_version(void) { return SIDA_MPI_VERSION; }

/*
 * MPI_Init. Open MPI's components are plugins that resolve libmpi's symbols globally, while
 * Deno.dlopen opens this shim (and so libmpi) with RTLD_LOCAL: libmpi is re-opened with
 * RTLD_GLOBAL first (as mpi4py does). Returns the thread level provided, or -1 - error code.
 */
int sida_mpi_init(void) {
  Dl_info info;
  if (dladdr((void *)&MPI_Init, &info) && info.dli_fname) {
    dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  }
  int flag = 0;
  MPI_Initialized(&flag);
  int provided = MPI_THREAD_SINGLE;
  if (!flag) {
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return -1 - rc;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return provided;
}

int sida_mpi_rank(void) {
  int r = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int sida_mpi_size(void) {
  int s = -1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

/* In-place sum of a float32 buffer over every rank. */
int sida_mpi_allreduce_f32_sum(float *buf, int64_t n) {
  for (int64_t off = 0; off < n; off += CHUNK) {
    int64_t k = n - off < CHUNK ? n - off : CHUNK;
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return rc;
  }
  return MPI_SUCCESS;
}

/* In-place reduction of a float64 buffer: op 0 sum, 1 max, 2 min. */
int sida_mpi_allreduce_f64(double *buf, int64_t n, int op) {
  MPI_Op o = op == 1 ? MPI_MAX : op == 2 ? MPI_MIN : MPI_SUM;
  for (int64_t off = 0; off < n; off += CHUNK) {
    int64_t k = n - off < CHUNK ? n - off : CHUNK;
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_DOUBLE, o, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return rc;
  }
  return MPI_SUCCESS;
}

/* Broadcast of n bytes from `root`. */
int sida_mpi_bcast(uint8_t *buf, int64_t n, int root) {
  for (int64_t off = 0; off < n; off += CHUNK) {
    int64_t k = n - off < CHUNK ? n - off : CHUNK;
    int rc = MPI_Bcast(buf + off, (int)k, MPI_BYTE, root, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return rc;
  }
  return MPI_SUCCESS;
}

/* Every rank's `n` float64 values, in rank order, into `out` (counts[i] values from rank i). */
int sida_mpi_allgatherv_f64(const double *send, int n, double *out, const int *counts) {
  int size = sida_mpi_size();
  int *displs = malloc(sizeof(int) * (size_t)size);
  if (!displs) return MPI_ERR_NO_MEM;
  int d = 0;
  for (int i = 0; i < size; i++) {
    displs[i] = d;
    d += counts[i];
  }
  int rc = MPI_Allgatherv(send, n, MPI_DOUBLE, out, counts, displs, MPI_DOUBLE, MPI_COMM_WORLD);
  free(displs);
  return rc;
}

/* Every rank's one int into `out` (rank order). */
int sida_mpi_allgather_i32(int v, int *out) {
  return MPI_Allgather(&v, 1, MPI_INT, out, 1, MPI_INT, MPI_COMM_WORLD);
}

int sida_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

/* Stops every rank of the job (does not return). */
void sida_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

int sida_mpi_finalize(void) {
  int done = 0;
  MPI_Finalized(&done);
  return done ? MPI_SUCCESS : MPI_Finalize();
}

/* The message of an MPI error code into buf (NUL-terminated). */
void sida_mpi_error_string(int code, char *buf, int len) {
  char s[MPI_MAX_ERROR_STRING];
  int n = 0;
  if (MPI_Error_string(code, s, &n) != MPI_SUCCESS) n = 0;
  s[n < MPI_MAX_ERROR_STRING ? n : MPI_MAX_ERROR_STRING - 1] = 0;
  strncpy(buf, s, (size_t)len - 1);
  buf[len - 1] = 0;
}
