/*
 * test_shm.c - unit tests for src/shm (the UPN load/store path).
 *
 * Each test forks L processes that open one engine on a segment name unique
 * to the test ("/duet-test-<pid>-<n>"). Children check their own results
 * against a serial reference computed here, print what went wrong to stderr
 * and report through their exit status; the parent waits with a deadline,
 * kills stragglers, and checks that no segment is left in /dev/shm.
 *
 * Inputs are small integers chosen so that every partial result is exact in
 * every datatype tested (int8, int32, bfloat16, float32, float64), so the
 * reference does not depend on the order in which the engine reduces. AVG
 * divides by avg_n = L + 1, not L, to prove the caller's count is used.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "reduce/reduce.h"
#include "shm/shm.h"
#include "topo/topo.h"

#define OPEN_TIMEOUT_MS 20000
#define CALL_TIMEOUT_MS 20000
#define GROUP_DEADLINE_S 240
#define MAX_L 4
#define BIG_COUNT 1048579u

static int name_serial;

static void make_name(char *buf, size_t len) {
  snprintf(buf, len, "/duet-test-%d-%d", (int)getpid(), name_serial++);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int segment_exists(const char *name) {
  char path[128];
  snprintf(path, sizeof(path), "/dev/shm%s", name);
  return access(path, F_OK) == 0;
}

typedef int (*child_fn)(duet__shm_t *shm, int rank, int L, void *arg);

/* Child: open, let rank 0 unlink after the collective open, run fn, close. */
/* Placement tests: before opening, a child sits on place_cpu[rank] with
 * place_mask as its CPU mask (place_set). */
static int place_set;
static int place_cpu[MAX_L];
static cpu_set_t place_mask;

static void child_place(int rank) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(place_cpu[rank], &one);
  if (sched_setaffinity(0, sizeof(one), &one) != 0 ||
      sched_setaffinity(0, sizeof(place_mask), &place_mask) != 0) {
    fprintf(stderr, "rank %d: sched_setaffinity: %s\n", rank, strerror(errno));
    _exit(91);
  }
}

static void child_main(const char *name, int rank, int L, child_fn fn, void *arg) {
  char err[DUET_SHM_ERRLEN];
  duet__shm_t *shm = NULL;
  if (place_set)
    child_place(rank);
  duet_status_t rc = duet__shm_open(&shm, name, rank, L, OPEN_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d: open %s: %d %s\n", rank, name, (int)rc, err);
    _exit(90);
  }
  if (rank == 0)
    duet__shm_unlink(shm);
  int res = fn(shm, rank, L, arg);
  duet__shm_close(shm);
  _exit(res);
}

/* Fork L ranks running fn; return how many did not exit with status 0. */
static int run_group(int L, child_fn fn, void *arg) {
  char name[64];
  pid_t pids[MAX_L];
  int status[MAX_L], done[MAX_L] = {0}, left = L, failed = 0;

  make_name(name, sizeof(name));
  fflush(NULL);
  for (int r = 0; r < L; r++) {
    pids[r] = fork();
    cr_assert(pids[r] >= 0, "fork: %s", strerror(errno));
    if (pids[r] == 0)
      child_main(name, r, L, fn, arg);
  }
  double deadline = now_s() + GROUP_DEADLINE_S;
  while (left > 0 && now_s() < deadline) {
    for (int r = 0; r < L; r++) {
      if (!done[r] && waitpid(pids[r], &status[r], WNOHANG) == pids[r]) {
        done[r] = 1;
        left--;
      }
    }
    if (left > 0)
      usleep(2000);
  }
  for (int r = 0; r < L; r++) {
    if (!done[r]) {
      fprintf(stderr, "rank %d of %d still running after %d s: killed\n", r, L, GROUP_DEADLINE_S);
      kill(pids[r], SIGKILL);
      waitpid(pids[r], &status[r], 0);
      failed++;
    } else if (!WIFEXITED(status[r]) || WEXITSTATUS(status[r]) != 0) {
      fprintf(stderr, "rank %d of %d: %s %d\n", r, L,
              WIFEXITED(status[r]) ? "exit status" : "signal",
              WIFEXITED(status[r]) ? WEXITSTATUS(status[r]) : WTERMSIG(status[r]));
      failed++;
    }
  }
  int leaked = segment_exists(name);
  shm_unlink(name); /* clean up even when a rank died before unlinking */
  cr_expect(!leaked, "segment %s left in /dev/shm", name);
  return failed + leaked;
}

/* ---- inputs and the serial reference ---- */

static const duet_datatype_t test_dts[] = {DUET_INT32, DUET_FLOAT32, DUET_FLOAT64, DUET_BFLOAT16,
                                           DUET_INT8};
static const duet_op_t test_ops[] = {DUET_SUM, DUET_PROD, DUET_MIN, DUET_MAX, DUET_AVG};
static const size_t test_counts[] = {0, 1, 7, 1023, BIG_COUNT};

/* Exact small integers: sums within [-32, 32], products within [-16, 16],
 * min/max operands within [-100, 100]; `salt` varies them between calls. */
static int64_t input(duet_op_t op, int rank, size_t i, unsigned salt) {
  size_t k = i + salt;
  switch (op) {
  case DUET_PROD:
    switch ((k * 5 + (size_t)rank * 3) % 7) {
    case 0:
      return 2;
    case 1:
      return -1;
    default:
      return 1;
    }
  case DUET_MIN:
  case DUET_MAX:
    return (int64_t)((k * 31 + (size_t)rank * 17 + 5) % 201) - 100;
  default:
    return (int64_t)((k * 7 + (size_t)rank * 13 + 3) % 17) - 8;
  }
}

/* float -> bfloat16, round to nearest even (no NaN occurs in these tests) */
static uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Store v (or, for AVG, v / avg_n as the datatype divides) at element i. */
static void store(void *buf, size_t i, duet_datatype_t dt, int64_t v, int avg_n) {
  switch (dt) {
  case DUET_INT32:
    ((int32_t *)buf)[i] = (int32_t)(avg_n ? v / avg_n : v);
    break;
  case DUET_INT8:
    ((int8_t *)buf)[i] = (int8_t)(avg_n ? v / avg_n : v);
    break;
  case DUET_FLOAT32:
    ((float *)buf)[i] = avg_n ? (float)v / (float)avg_n : (float)v;
    break;
  case DUET_FLOAT64:
    ((double *)buf)[i] = avg_n ? (double)v / (double)avg_n : (double)v;
    break;
  case DUET_BFLOAT16:
    ((uint16_t *)buf)[i] = to_bf16(avg_n ? (float)v / (float)avg_n : (float)v);
    break;
  default:
    abort();
  }
}

static void fill_input(void *buf, size_t count, duet_datatype_t dt, duet_op_t op, int rank,
                       unsigned salt) {
  for (size_t i = 0; i < count; i++)
    store(buf, i, dt, input(op, rank, i, salt), 0);
}

static void fill_reference(void *buf, size_t count, duet_datatype_t dt, duet_op_t op, int L,
                           int avg_n, unsigned salt) {
  for (size_t i = 0; i < count; i++) {
    int64_t acc = input(op, 0, i, salt);
    for (int r = 1; r < L; r++) {
      int64_t v = input(op, r, i, salt);
      switch (op) {
      case DUET_PROD:
        acc *= v;
        break;
      case DUET_MIN:
        acc = v < acc ? v : acc;
        break;
      case DUET_MAX:
        acc = v > acc ? v : acc;
        break;
      default:
        acc += v;
      }
    }
    store(buf, i, dt, acc, op == DUET_AVG ? avg_n : 0);
  }
}

/* Check one allreduce; prints the first mismatch. 0 on success. */
static int check_one(duet__shm_t *shm, int rank, int L, duet_datatype_t dt, duet_op_t op,
                     size_t count, int in_place, unsigned salt, char *send, char *recv, char *ref) {
  char err[DUET_SHM_ERRLEN];
  size_t esz = duet__dt_size(dt), bytes = count * esz;
  int avg_n = L + 1;

  fill_input(send, count, dt, op, rank, salt);
  fill_reference(ref, count, dt, op, L, avg_n, salt);
  memset(recv, 0xa5, bytes + 64);
  if (in_place)
    memcpy(recv, send, bytes);
  duet_status_t rc = duet__shm_allreduce(shm, in_place ? recv : send, recv, count, dt, op, avg_n,
                                         L > 2, CALL_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d %s %s count %zu %s: status %d: %s\n", rank, L, duet__dt_name(dt),
            duet__op_name(op), count, in_place ? "in place" : "out of place", (int)rc, err);
    return 1;
  }
  if (memcmp(recv, ref, bytes) != 0) {
    size_t i = 0;
    while (memcmp(recv + i * esz, ref + i * esz, esz) == 0)
      i++;
    fprintf(stderr, "rank %d/%d %s %s count %zu %s: element %zu differs\n", rank, L,
            duet__dt_name(dt), duet__op_name(op), count, in_place ? "in place" : "out of place", i);
    return 1;
  }
  for (size_t b = bytes; b < bytes + 64; b++) {
    if ((unsigned char)recv[b] != 0xa5) {
      fprintf(stderr, "rank %d/%d %s count %zu: wrote past the end\n", rank, L, duet__dt_name(dt),
              count);
      return 1;
    }
  }
  if (!in_place) {
    fill_input(ref, count, dt, op, rank, salt);
    if (memcmp(send, ref, bytes) != 0) {
      fprintf(stderr, "rank %d/%d %s count %zu: sendbuf modified\n", rank, L, duet__dt_name(dt),
              count);
      return 1;
    }
  }
  return 0;
}

/* Every datatype x op x count, out of place and in place, then a barrier. */
static int child_matrix(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = BIG_COUNT * 8 + 64;
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap);
  char err[DUET_SHM_ERRLEN];
  int bad = 0;
  if (send == NULL || recv == NULL || ref == NULL)
    _exit(91);
  for (size_t d = 0; d < sizeof(test_dts) / sizeof(test_dts[0]); d++)
    for (size_t o = 0; o < sizeof(test_ops) / sizeof(test_ops[0]); o++)
      for (size_t c = 0; c < sizeof(test_counts) / sizeof(test_counts[0]); c++)
        for (int in_place = 0; in_place < 2; in_place++)
          bad |= check_one(shm, rank, L, test_dts[d], test_ops[o], test_counts[c], in_place,
                           (unsigned)(d * 100 + o * 10 + c), send, recv, ref);
  if (duet__shm_barrier(shm, L > 2, CALL_TIMEOUT_MS, err) != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d barrier: %s\n", rank, L, err);
    bad = 1;
  }
  free(send);
  free(recv);
  free(ref);
  return bad;
}

Test(shm, matrix_1_rank) {
  cr_assert_eq(run_group(1, child_matrix, NULL), 0);
}
Test(shm, matrix_2_ranks) {
  cr_assert_eq(run_group(2, child_matrix, NULL), 0);
}
Test(shm, matrix_3_ranks) {
  cr_assert_eq(run_group(3, child_matrix, NULL), 0);
}
Test(shm, matrix_4_ranks) {
  cr_assert_eq(run_group(4, child_matrix, NULL), 0);
}

/* Many calls in a row mixing eager, chunked, empty calls and barriers, so
 * slots and chunk buffers are reused with both parities. */
static int child_sequence(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  static const size_t counts[] = {1, 3000, 0, 5, 200000, 4096, 1, 0, 131072, 2};
  size_t cap = 200000 * 4 + 64;
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap);
  char err[DUET_SHM_ERRLEN];
  int bad = 0;
  if (send == NULL || recv == NULL || ref == NULL)
    _exit(91);
  for (unsigned it = 0; it < 60 && !bad; it++) {
    size_t count = counts[it % 10];
    duet_op_t op = test_ops[it % 5];
    bad |= check_one(shm, rank, L, DUET_INT32, op, count, (int)(it & 1), it, send, recv, ref);
    if (it % 7 == 3 && duet__shm_barrier(shm, L > 2, CALL_TIMEOUT_MS, err) != DUET_SUCCESS) {
      fprintf(stderr, "rank %d/%d barrier: %s\n", rank, L, err);
      bad = 1;
    }
  }
  free(send);
  free(recv);
  free(ref);
  return bad;
}

Test(shm, sequence_2_ranks) {
  cr_assert_eq(run_group(2, child_sequence, NULL), 0);
}
Test(shm, sequence_4_ranks) {
  cr_assert_eq(run_group(4, child_sequence, NULL), 0);
}

/* Buffers that are not 16-byte aligned, copied out both with streaming
 * stores (forced for out-of-place calls) and, in place, without. */
#define UNALIGNED_COUNT 2200001u

static int child_unaligned(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = UNALIGNED_COUNT * 4 + 128;
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap);
  int bad = 0;
  if (send == NULL || recv == NULL || ref == NULL)
    _exit(91);
  duet__shm_set_stream_min(shm, 0);
  bad |= check_one(shm, rank, L, DUET_FLOAT32, DUET_SUM, UNALIGNED_COUNT, 0, 1, send + 4, recv + 12,
                   ref);
  bad |= check_one(shm, rank, L, DUET_INT8, DUET_MAX, UNALIGNED_COUNT * 4, 0, 2, send + 3, recv + 1,
                   ref);
  bad |= check_one(shm, rank, L, DUET_INT32, DUET_SUM, UNALIGNED_COUNT, 1, 3, send, recv + 8, ref);
  free(send);
  free(recv);
  free(ref);
  return bad;
}

Test(shm, unaligned_large_2_ranks) {
  cr_assert_eq(run_group(2, child_unaligned, NULL), 0);
}
Test(shm, unaligned_large_3_ranks) {
  cr_assert_eq(run_group(3, child_unaligned, NULL), 0);
}

/* Non-exact float inputs: every rank must end with the same bytes. Ranks
 * publish their results in memory shared by the parent. */
#define IDENT_COUNT 300001u
static const size_t ident_counts[] = {5, 3001, IDENT_COUNT};

static int child_identical(duet__shm_t *shm, int rank, int L, void *arg) {
  float *out = arg; /* MAX_L x 3 x IDENT_COUNT floats */
  float *send = malloc(IDENT_COUNT * sizeof(float));
  char err[DUET_SHM_ERRLEN];
  if (send == NULL)
    _exit(91);
  for (int c = 0; c < 3; c++) {
    size_t count = ident_counts[c];
    unsigned seed = 12345u + (unsigned)rank * 7919u;
    for (size_t i = 0; i < count; i++) {
      seed = seed * 1103515245u + 12345u;
      send[i] = (float)(seed >> 8) * 0x1p-17f - 64.0f; /* rounding happens when summed */
    }
    float *dst = out + ((size_t)rank * 3 + (size_t)c) * IDENT_COUNT;
    if (duet__shm_allreduce(shm, send, dst, count, DUET_FLOAT32, DUET_AVG, 3, L > 2,
                            CALL_TIMEOUT_MS, err) != DUET_SUCCESS) {
      fprintf(stderr, "rank %d/%d: %s\n", rank, L, err);
      return 1;
    }
  }
  free(send);
  return 0;
}

static void check_identical(int L) {
  size_t bytes = (size_t)MAX_L * 3 * IDENT_COUNT * sizeof(float);
  float *out = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  cr_assert(out != MAP_FAILED);
  cr_assert_eq(run_group(L, child_identical, out), 0);
  for (int c = 0; c < 3; c++)
    for (int r = 1; r < L; r++)
      cr_expect(memcmp(out + (size_t)c * IDENT_COUNT, out + ((size_t)r * 3 + c) * IDENT_COUNT,
                       ident_counts[c] * sizeof(float)) == 0,
                "count %zu: rank %d differs from rank 0", ident_counts[c], r);
  munmap(out, bytes);
}

Test(shm, bitwise_identical_3_ranks) {
  check_identical(3);
}
Test(shm, bitwise_identical_4_ranks) {
  check_identical(4);
}

/* ---- all-to-all ---- */

/* Byte j of the block rank `from` sends to rank `to`: depends on both ranks,
 * the position and the call, so a block from the wrong peer, offset or call
 * is caught. */
static unsigned char a2a_byte(int from, int to, size_t j, unsigned salt) {
  return (unsigned char)(from * 37 + to * 11 + (j * 7 + j / 251) + salt * 5);
}

/* Per-block byte counts: empty, one byte, odd sizes around the eager limit
 * (8 KiB over all ranks) and the chunk piece, and several pieces. */
static const size_t a2a_bytes[] = {0, 1, 3, 1000, 2048, 2049, 4099, 65536, 262147, 700001};

static int check_alltoall(duet__shm_t *shm, int rank, int L, size_t bytes, int in_place,
                          unsigned salt, unsigned char *send, unsigned char *recv) {
  char err[DUET_SHM_ERRLEN];
  unsigned char *out = in_place ? send : recv;
  for (int d = 0; d < L; d++)
    for (size_t j = 0; j < bytes; j++)
      send[(size_t)d * bytes + j] = a2a_byte(rank, d, j, salt);
  if (!in_place)
    memset(recv, 0xEE, (size_t)L * bytes + 64);
  duet_status_t rc = duet__shm_alltoall(shm, send, out, bytes, L > 2, CALL_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d alltoall %zu B: %d %s\n", rank, L, bytes, (int)rc, err);
    return 1;
  }
  for (int s = 0; s < L; s++)
    for (size_t j = 0; j < bytes; j++)
      if (out[(size_t)s * bytes + j] != a2a_byte(s, rank, j, salt)) {
        fprintf(stderr, "rank %d/%d alltoall %zu B %s: byte %zu of block %d is %u, want %u\n", rank,
                L, bytes, in_place ? "in place" : "out of place", j, s, out[(size_t)s * bytes + j],
                a2a_byte(s, rank, j, salt));
        return 1;
      }
  if (!in_place && recv[(size_t)L * bytes] != 0xEE) {
    fprintf(stderr, "rank %d/%d alltoall %zu B: wrote past the end\n", rank, L, bytes);
    return 1;
  }
  for (int d = 0; d < L && !in_place; d++)
    for (size_t j = 0; j < bytes; j++)
      if (send[(size_t)d * bytes + j] != a2a_byte(rank, d, j, salt)) {
        fprintf(stderr, "rank %d/%d alltoall %zu B: sendbuf modified\n", rank, L, bytes);
        return 1;
      }
  return 0;
}

/* Every size in and out of place, interleaved with allreduces so both
 * share slot and chunk-buffer parities. */
static int child_alltoall(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = 700001u * (size_t)(L > 2 ? L : 2) + 64; /* also 300000 int32 */
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap), *red = malloc(cap);
  int bad = 0;
  unsigned salt = 0;
  if (send == NULL || recv == NULL || ref == NULL || red == NULL)
    _exit(91);
  for (size_t k = 0; k < sizeof(a2a_bytes) / sizeof(a2a_bytes[0]) && !bad; k++) {
    for (int in_place = 0; in_place < 2 && !bad; in_place++) {
      bad |= check_alltoall(shm, rank, L, a2a_bytes[k], in_place, salt++, (unsigned char *)send,
                            (unsigned char *)recv);
      if (!bad)
        bad |= check_one(shm, rank, L, DUET_INT32, DUET_SUM, k % 2 ? 5 : 300000, 0, salt++, red,
                         recv, ref);
    }
  }
  free(send);
  free(recv);
  free(ref);
  free(red);
  return bad;
}

Test(shm, alltoall_1_rank) {
  cr_assert_eq(run_group(1, child_alltoall, NULL), 0);
}
Test(shm, alltoall_2_ranks) {
  cr_assert_eq(run_group(2, child_alltoall, NULL), 0);
}
Test(shm, alltoall_3_ranks) {
  cr_assert_eq(run_group(3, child_alltoall, NULL), 0);
}
Test(shm, alltoall_4_ranks) {
  cr_assert_eq(run_group(4, child_alltoall, NULL), 0);
}

/* ---- all-to-all through the kernel (process_vm_readv) ---- */

/* Make process_vm_readv fail with EPERM in this process from now on, as a
 * container's seccomp profile or a ptrace policy would. */
static int refuse_kernel_reads(void) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_readv, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = (unsigned short)(sizeof(f) / sizeof(f[0])), .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
    fprintf(stderr, "seccomp: %s\n", strerror(errno));
    return -1;
  }
  return 0;
}

/* What a kernel-copy child does: `use` for duet__shm_set_kernel_copy
 * (-2: leave the default), and which rank, if any, refuses the kernel's
 * reads, before its first all-to-all or after `refuse_after` calls. */
struct kernel_case {
  int use[MAX_L];
  int refuser, refuse_after;
  int expect_copies; /* 1: every rank read through the kernel at least once; 0: none did */
};

/* Blocks from 16 KiB (the kernel's threshold), each size several times so
 * that the forced way (from a class's third call) and the auto trials (from
 * the fifth) are reached; every fourth call in place on one rank (rank 1),
 * which the others must survive. */
static int child_kernel(duet__shm_t *shm, int rank, int L, void *arg) {
  const struct kernel_case *kc = arg;
  static const size_t sizes[] = {16384, 65536, 262147, 700001};
  size_t cap = 700001u * (size_t)L + 64;
  unsigned char *send = malloc(cap), *recv = malloc(cap);
  unsigned salt = 0;
  int bad = 0, calls = 0;
  if (send == NULL || recv == NULL)
    _exit(91);
  if (kc->use[rank] != -2)
    duet__shm_set_kernel_copy(shm, kc->use[rank]);
  for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]) && !bad; k++)
    for (int i = 0; i < 12 && !bad; i++, calls++) {
      if (rank == kc->refuser && calls == kc->refuse_after && refuse_kernel_reads() != 0)
        _exit(92);
      if (rank == kc->refuser && kc->refuse_after > 0 && calls == kc->refuse_after) {
        /* the first read refused fails this rank's call, and only that
         * one; its peers still get its blocks */
        char err[DUET_SHM_ERRLEN];
        duet_status_t rc;
        for (int d = 0; d < L; d++)
          for (size_t j = 0; j < sizes[k]; j++)
            send[(size_t)d * sizes[k] + j] = a2a_byte(rank, d, j, salt);
        salt++;
        rc = duet__shm_alltoall(shm, send, recv, sizes[k], L > 2, CALL_TIMEOUT_MS, err);
        if (rc != DUET_ERR_SYSTEM || strstr(err, "process_vm_readv") == NULL) {
          fprintf(stderr, "rank %d: a refused read gave %d (%s), want DUET_ERR_SYSTEM\n", rank,
                  (int)rc, err);
          bad = 1;
        }
        continue;
      }
      bad |= check_alltoall(shm, rank, L, sizes[k], rank == 1 && i % 4 == 3, salt++, send, recv);
    }
  if (!bad && kc->expect_copies != (duet__shm_kernel_copies(shm) > 0)) {
    fprintf(stderr, "rank %d/%d: %llu all-to-alls read through the kernel, want %s\n", rank, L,
            (unsigned long long)duet__shm_kernel_copies(shm), kc->expect_copies ? "some" : "none");
    bad = 1;
  }
  free(send);
  free(recv);
  return bad;
}

static struct kernel_case kernel_forced(int L) {
  struct kernel_case kc = {.refuser = -1, .expect_copies = 1};
  for (int r = 0; r < L; r++)
    kc.use[r] = 1;
  return kc;
}

Test(shm, alltoall_kernel_2_ranks) {
  struct kernel_case kc = kernel_forced(2);
  cr_assert_eq(run_group(2, child_kernel, &kc), 0);
}
Test(shm, alltoall_kernel_3_ranks) {
  struct kernel_case kc = kernel_forced(3);
  cr_assert_eq(run_group(3, child_kernel, &kc), 0);
}
Test(shm, alltoall_kernel_4_ranks) {
  struct kernel_case kc = kernel_forced(4);
  cr_assert_eq(run_group(4, child_kernel, &kc), 0);
}

/* The default times both ways: its trials read through the kernel. */
Test(shm, alltoall_kernel_auto_tries_it) {
  struct kernel_case kc = {.use = {-2, -2, -2}, .refuser = -1, .expect_copies = 1};
  cr_assert_eq(run_group(3, child_kernel, &kc), 0);
}

/* A rank set to 0 keeps every rank on the segment. */
Test(shm, alltoall_kernel_off_on_one_rank) {
  struct kernel_case kc = kernel_forced(3);
  kc.use[2] = 0;
  kc.expect_copies = 0;
  cr_assert_eq(run_group(3, child_kernel, &kc), 0);
}

/* A rank whose kernel refuses the reads (seccomp) keeps every rank on the
 * segment: its probe fails before the first large call. */
Test(shm, alltoall_kernel_refused_from_the_start) {
  struct kernel_case kc = kernel_forced(3);
  kc.refuser = 2;
  kc.refuse_after = 0;
  kc.expect_copies = 0;
  cr_assert_eq(run_group(3, child_kernel, &kc), 0);
}

/* Refused after the probe passed: that rank's next call fails, naming the
 * kernel's read, and the calls after it take the segment on every rank. */
Test(shm, alltoall_kernel_refused_later) {
  struct kernel_case kc = kernel_forced(3);
  kc.refuser = 1;
  kc.refuse_after = 6;
  cr_assert_eq(run_group(3, child_kernel, &kc), 0);
}

/* Local rank 0's choice (shm.h), from given copy times. */
Test(shm, kernel_pick) {
  uint64_t ns[2][DUET_SHM_KERNEL_RUN];
  uint32_t seen[2] = {0, 0};
  int choice = 0;
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 10, &choice, 0, 1, 0), 0, "not allowed: never");
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 10, &choice, 1, 1, 0), 1, "forced: always");
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 1, &choice, 1, 0, 0), 0, "the segment is timed first");
  seen[0] = DUET_SHM_KERNEL_RUN;
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 5, &choice, 1, 0, 0), 1, "then the kernel");
  seen[0] = seen[1] = 2 * DUET_SHM_KERNEL_RUN + 1;
  for (unsigned i = 0; i < DUET_SHM_KERNEL_RUN; i++) {
    ns[0][i] = 100000 + 1000 * i; /* the segment: 100 us at best */
    ns[1][i] = 900000;
  }
  ns[1][2] = 76000; /* the kernel's best: 76 us, not under three quarters */
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 20, &choice, 1, 0, 0), 0);
  cr_assert_eq(choice, 0);
  ns[1][2] = 74000; /* under three quarters: the kernel */
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 21, &choice, 1, 0, 0), 1);
  ns[1][2] = 89000; /* under nine tenths: stays */
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 22, &choice, 1, 0, 0), 1);
  ns[1][2] = 91000; /* over nine tenths: back */
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 23, &choice, 1, 0, 0), 0);
  cr_assert_eq(choice, 0);
  for (uint32_t c = 24; c < 3 * DUET_SHM_KERNEL_TRY; c++) {
    int trial = c % DUET_SHM_KERNEL_TRY >= DUET_SHM_KERNEL_TRY - DUET_SHM_KERNEL_RUN;
    cr_assert_eq(duet__shm_kernel_pick(ns, seen, c, &choice, 1, 0, 0), trial,
                 "call %u: the trials, and only they, go the other way", c);
  }
  /* whole calls: the kernel under nine tenths, back above the segment */
  choice = 0;
  ns[1][2] = 92000;
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 25, &choice, 1, 0, 1), 0, "92%: not yet");
  ns[1][2] = 88000;
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 26, &choice, 1, 0, 1), 1, "88%: the kernel");
  ns[1][2] = 99000;
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 27, &choice, 1, 0, 1), 1, "99%: stays");
  ns[1][2] = 101000;
  cr_assert_eq(duet__shm_kernel_pick(ns, seen, 28, &choice, 1, 0, 1), 0, "101%: back");
  cr_assert_eq(duet__shm_kernel_best(ns[0], 2), 100000, "the shortest of the first two");
  cr_assert_eq(duet__shm_kernel_best(ns[1], 0), UINT64_MAX);
}

/* The way taken slowing by half starts a trial (shm.h). */
Test(shm, kernel_slowed) {
  uint64_t ns[DUET_SHM_KERNEL_RUN];
  for (unsigned i = 0; i < DUET_SHM_KERNEL_RUN; i++)
    ns[i] = 160000 + 1000 * i; /* 160 us at best */
  cr_assert(duet__shm_kernel_slowed(ns, DUET_SHM_KERNEL_RUN, 100000), "1.6x the floor");
  cr_assert_not(duet__shm_kernel_slowed(ns, DUET_SHM_KERNEL_RUN, 110000), "1.45x: not yet");
  cr_assert_not(duet__shm_kernel_slowed(ns, DUET_SHM_KERNEL_RUN, 0), "no floor yet");
  cr_assert_not(duet__shm_kernel_slowed(ns, DUET_SHM_KERNEL_RUN - 1, 100000),
                "fewer than a run's times");
  ns[1] = 120000; /* one call of the last run still near the floor */
  cr_assert_not(duet__shm_kernel_slowed(ns, DUET_SHM_KERNEL_RUN, 100000), "best 1.2x");
}

/* ---- allgather, broadcast, reduce-scatter, reduce ----
 *
 * Each check fills its buffers, surrounds recvbuf with a guard, calls the
 * engine and checks the result, the guard and (out of place) sendbuf. Every
 * call is followed by an allreduce or an all-to-all of alternating size, so
 * the new collectives share slot and chunk-buffer parities with the old. */

#define GUARD 64
#define GUARD_BYTE 0xa5

/* The engine's limits as this test assumes them (shm.c). */
#define EAGER_MAX (8u << 10)
#define CHUNK (512u << 10)
#define ROOTED_DEPTH 32u /* DUET_SHM_ROOTED_DEPTH */

static int guard_ok(const char *what, int rank, int L, size_t n, const unsigned char *end) {
  for (size_t b = 0; b < GUARD; b++)
    if (end[b] != GUARD_BYTE) {
      fprintf(stderr, "rank %d/%d %s %zu: wrote past the end\n", rank, L, what, n);
      return 1;
    }
  return 0;
}

/* An allreduce or an all-to-all, eager or chunked, by k. */
static int interleave(duet__shm_t *shm, int rank, int L, unsigned k, char *a, char *b, char *c) {
  if (k % 3 == 2)
    return check_alltoall(shm, rank, L, k % 2 ? 3 : 300001, (int)(k & 4) != 0, k,
                          (unsigned char *)a, (unsigned char *)b);
  return check_one(shm, rank, L, DUET_INT32, test_ops[k % 5], k % 2 ? 5 : 300000, (int)(k & 4) != 0,
                   k, a, b, c);
}

/* Byte j of the block from rank s. */
static unsigned char ag_byte(int s, size_t j, unsigned salt) {
  return (unsigned char)(s * 53 + (j * 13 + j / 241) + salt * 7 + 1);
}

/* mode 0: out of place; 1: sendbuf == recvbuf; 2: sendbuf = recvbuf + rank x bytes */
static int check_allgather(duet__shm_t *shm, int rank, int L, size_t bytes, int mode, unsigned salt,
                           unsigned char *send, unsigned char *recv) {
  char err[DUET_SHM_ERRLEN];
  size_t total = (size_t)L * bytes;
  unsigned char *own = mode == 0 ? send : recv + (size_t)rank * bytes;
  memset(recv, GUARD_BYTE, total + GUARD);
  for (size_t j = 0; j < bytes; j++)
    own[j] = ag_byte(rank, j, salt);
  const void *sb = mode == 0 ? (void *)send : mode == 1 ? (void *)recv : (void *)own;
  duet_status_t rc = duet__shm_allgather(shm, sb, recv, bytes, L > 2, CALL_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d allgather %zu B mode %d: %d %s\n", rank, L, bytes, mode, (int)rc,
            err);
    return 1;
  }
  for (int s = 0; s < L; s++)
    for (size_t j = 0; j < bytes; j++)
      if (recv[(size_t)s * bytes + j] != ag_byte(s, j, salt)) {
        fprintf(stderr, "rank %d/%d allgather %zu B mode %d: byte %zu of block %d is %u, want %u\n",
                rank, L, bytes, mode, j, s, recv[(size_t)s * bytes + j], ag_byte(s, j, salt));
        return 1;
      }
  if (guard_ok("allgather", rank, L, bytes, recv + total) != 0)
    return 1;
  for (size_t j = 0; j < bytes && mode == 0; j++)
    if (send[j] != ag_byte(rank, j, salt)) {
      fprintf(stderr, "rank %d/%d allgather %zu B: sendbuf modified\n", rank, L, bytes);
      return 1;
    }
  return 0;
}

static const size_t ag_bytes[] = {
    0, 1, 63, 1000, EAGER_MAX, EAGER_MAX + 1, 65599, CHUNK, 2 * CHUNK + 77};

static int child_allgather(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = (2 * CHUNK + 77) * (size_t)L + 300001u * 4 + GUARD;
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap), *red = malloc(cap);
  int bad = 0;
  unsigned salt = 0;
  if (send == NULL || recv == NULL || ref == NULL || red == NULL)
    _exit(91);
  for (size_t k = 0; k < sizeof(ag_bytes) / sizeof(ag_bytes[0]) && !bad; k++)
    for (int mode = 0; mode < 3 && !bad; mode++) {
      bad |= check_allgather(shm, rank, L, ag_bytes[k], mode, salt++, (unsigned char *)send,
                             (unsigned char *)recv);
      if (!bad)
        bad |= interleave(shm, rank, L, salt++, red, recv, ref);
    }
  free(send);
  free(recv);
  free(ref);
  free(red);
  return bad;
}

Test(shm, allgather_1_rank) {
  cr_assert_eq(run_group(1, child_allgather, NULL), 0);
}
Test(shm, allgather_2_ranks) {
  cr_assert_eq(run_group(2, child_allgather, NULL), 0);
}
Test(shm, allgather_3_ranks) {
  cr_assert_eq(run_group(3, child_allgather, NULL), 0);
}
Test(shm, allgather_4_ranks) {
  cr_assert_eq(run_group(4, child_allgather, NULL), 0);
}

/* Root in place (sendbuf == recvbuf) or not; non-roots pass NULL or a
 * sendbuf that must stay unread and unmodified. */
static int check_broadcast(duet__shm_t *shm, int rank, int L, size_t bytes, int root, int in_place,
                           unsigned salt, unsigned char *send, unsigned char *recv) {
  char err[DUET_SHM_ERRLEN];
  memset(recv, GUARD_BYTE, bytes + GUARD);
  for (size_t j = 0; j < bytes; j++)
    send[j] = rank == root ? ag_byte(root, j, salt) : (unsigned char)(j * 3 + 1);
  if (rank == root && in_place)
    memcpy(recv, send, bytes);
  const void *sb =
      rank == root ? (in_place ? (void *)recv : (void *)send) : (salt % 2 ? NULL : (void *)send);
  duet_status_t rc = duet__shm_broadcast(shm, sb, recv, bytes, root, L > 2, CALL_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d broadcast %zu B root %d: %d %s\n", rank, L, bytes, root, (int)rc,
            err);
    return 1;
  }
  for (size_t j = 0; j < bytes; j++)
    if (recv[j] != ag_byte(root, j, salt)) {
      fprintf(stderr, "rank %d/%d broadcast %zu B root %d %s: byte %zu is %u, want %u\n", rank, L,
              bytes, root, in_place ? "in place" : "out of place", j, recv[j],
              ag_byte(root, j, salt));
      return 1;
    }
  if (guard_ok("broadcast", rank, L, bytes, recv + bytes) != 0)
    return 1;
  for (size_t j = 0; j < bytes; j++)
    if (send[j] != (rank == root ? ag_byte(root, j, salt) : (unsigned char)(j * 3 + 1))) {
      fprintf(stderr, "rank %d/%d broadcast %zu B: sendbuf modified\n", rank, L, bytes);
      return 1;
    }
  return 0;
}

/* ---- alltoallv ----
 * Counts (elements) a rank sends to another, by pattern: all empty; only
 * 0 -> L-1 non-empty, several pieces long (the others must run its steps
 * too); MoE-like skew, hottest destination 0; sizes from a hash, some
 * empty, some several pieces. Displacements leave a gap of d + 1 elements
 * before block d, and the gaps must stay untouched. */
enum { V_EMPTY, V_ONE_PAIR, V_SKEW, V_HASH, V_PATTERNS };

static size_t v_count(int pat, int from, int to, int L) {
  unsigned h = (unsigned)(from * 7919 + to * 104729 + pat * 31);
  switch (pat) {
  case V_EMPTY:
    return 0;
  case V_ONE_PAIR:
    return from == 0 && to == L - 1 ? 3 * CHUNK / 4 / 2 + 17 : from == to ? 5 : 0;
  case V_SKEW:
    return to == 0 ? 200003 : 70001 / (size_t)(to + 1);
  default:
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    return h % 5 == 0 ? 0 : (h % 3 == 0 ? 300007 + h % 1000 : h % 3000);
  }
}

static void v_layout(int pat, int rank, int L, int sending, size_t *cnt, size_t *disp,
                     size_t *total) {
  size_t at = 0;
  for (int d = 0; d < L; d++) {
    at += (size_t)d + 1; /* the gap */
    cnt[d] = sending ? v_count(pat, rank, d, L) : v_count(pat, d, rank, L);
    disp[d] = at;
    at += cnt[d];
  }
  *total = at + 1;
}

/* One call with element size es; the reference is the byte function. */
static int check_alltoallv(duet__shm_t *shm, int rank, int L, int pat, size_t es, unsigned salt,
                           unsigned char *send, unsigned char *recv) {
  char err[DUET_SHM_ERRLEN];
  size_t sc[MAX_L] = {0}, sd[MAX_L] = {0}, rc_[MAX_L] = {0}, rd[MAX_L] = {0}, stot, rtot;
  v_layout(pat, rank, L, 1, sc, sd, &stot);
  v_layout(pat, rank, L, 0, rc_, rd, &rtot);
  memset(send, 0x33, stot * es);
  memset(recv, GUARD_BYTE, rtot * es);
  for (int d = 0; d < L; d++)
    for (size_t j = 0; j < sc[d] * es; j++)
      send[sd[d] * es + j] = a2a_byte(rank, d, j, salt);
  duet_status_t rc =
      duet__shm_alltoallv(shm, send, sc, sd, recv, rc_, rd, es, L > 2, CALL_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d alltoallv pattern %d: %d %s\n", rank, L, pat, (int)rc, err);
    return 1;
  }
  for (int s = 0, next = 0; s < L; s++) {
    for (size_t j = (size_t)next; j < rd[s] * es; j++)
      if (recv[j] != GUARD_BYTE) {
        fprintf(stderr, "rank %d/%d alltoallv pattern %d: gap byte %zu written\n", rank, L, pat, j);
        return 1;
      }
    for (size_t j = 0; j < rc_[s] * es; j++)
      if (recv[rd[s] * es + j] != a2a_byte(s, rank, j, salt)) {
        fprintf(stderr, "rank %d/%d alltoallv pattern %d es %zu: byte %zu of block %d is %u, want %u\n",
                rank, L, pat, es, j, s, recv[rd[s] * es + j], a2a_byte(s, rank, j, salt));
        return 1;
      }
    next = (int)((rd[s] + rc_[s]) * es);
  }
  if (recv[(rtot - 1) * es] != GUARD_BYTE) {
    fprintf(stderr, "rank %d/%d alltoallv pattern %d: wrote past the end\n", rank, L, pat);
    return 1;
  }
  for (int d = 0; d < L; d++)
    for (size_t j = 0; j < sc[d] * es; j++)
      if (send[sd[d] * es + j] != a2a_byte(rank, d, j, salt)) {
        fprintf(stderr, "rank %d/%d alltoallv: sendbuf modified\n", rank, L);
        return 1;
      }
  return 0;
}

/* Every pattern with 1-, 4- and 8-byte elements; after each call a small
 * broadcast from a rotating root (rooted eager calls do not synchronise, so
 * a rank can run ahead into the next alltoallv while a peer still reads the
 * step count of the last) or an all-to-all. */
static int child_alltoallv(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = 8 * (3 * CHUNK + 300007u * 2 * MAX_L + 16 * MAX_L) + GUARD;
  unsigned char *send = malloc(cap), *recv = malloc(cap);
  static const size_t es[] = {1, 4, 8};
  int bad = 0;
  unsigned salt = 0;
  if (send == NULL || recv == NULL)
    _exit(91);
  for (int rep = 0; rep < 3 && !bad; rep++)
    for (int pat = 0; pat < V_PATTERNS && !bad; pat++)
      for (size_t e = 0; e < sizeof es / sizeof es[0] && !bad; e++) {
        bad |= check_alltoallv(shm, rank, L, pat, es[e], salt++, send, recv);
        if (!bad && salt % 4 == 3)
          bad |= check_alltoall(shm, rank, L, salt % 8 == 3 ? 5 : 300001, 0, salt, send, recv);
        else if (!bad)
          bad |= check_broadcast(shm, rank, L, 40, (int)(salt % (unsigned)L), 0, salt, send, recv);
        salt++;
      }
  free(send);
  free(recv);
  return bad;
}

Test(shm, alltoallv_1_rank) {
  cr_assert_eq(run_group(1, child_alltoallv, NULL), 0);
}
Test(shm, alltoallv_2_ranks) {
  cr_assert_eq(run_group(2, child_alltoallv, NULL), 0);
}
Test(shm, alltoallv_3_ranks) {
  cr_assert_eq(run_group(3, child_alltoallv, NULL), 0);
}
Test(shm, alltoallv_4_ranks) {
  cr_assert_eq(run_group(4, child_alltoallv, NULL), 0);
}

Test(shm, alltoallv_bad_arguments) {
  char name[64], err[DUET_SHM_ERRLEN];
  duet__shm_t *shm;
  size_t one[1] = {1}, two[1] = {2}, zero[1] = {0};
  char buf[8];
  make_name(name, sizeof(name));
  cr_assert_eq(duet__shm_open(&shm, name, 0, 1, 1000, err), DUET_SUCCESS, "%s", err);
  cr_assert_eq(duet__shm_alltoallv(shm, buf, one, zero, buf + 4, two, zero, 1, 0, 1000, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(err, "itself") != NULL, "%s", err);
  cr_assert_eq(duet__shm_alltoallv(shm, NULL, one, zero, buf, one, zero, 1, 0, 1000, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_assert_eq(duet__shm_alltoallv(shm, buf, NULL, zero, buf, one, zero, 1, 0, 1000, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_assert_eq(duet__shm_alltoallv(shm, buf, one, zero, buf + 4, one, zero, 1, 0, 1000, err),
               DUET_SUCCESS, "%s", err);
  duet__shm_unlink(shm);
  duet__shm_close(shm);
}

static const size_t bc_bytes[] = {0, 1, 63, EAGER_MAX, EAGER_MAX + 1, CHUNK - 1, 3 * CHUNK + 5};

static int child_broadcast(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = 3 * CHUNK + 5 + 300001u * (size_t)(L > 2 ? L : 2) + GUARD;
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap), *red = malloc(cap);
  int bad = 0;
  unsigned salt = 0;
  if (send == NULL || recv == NULL || ref == NULL || red == NULL)
    _exit(91);
  for (size_t k = 0; k < sizeof(bc_bytes) / sizeof(bc_bytes[0]) && !bad; k++)
    for (int v = 0; v < 4 && !bad; v++) {
      int root = v % 2 ? L - 1 : 0;
      bad |= check_broadcast(shm, rank, L, bc_bytes[k], root, v / 2, salt++, (unsigned char *)send,
                             (unsigned char *)recv);
      if (!bad)
        bad |= interleave(shm, rank, L, salt++, red, recv, ref);
    }
  free(send);
  free(recv);
  free(ref);
  free(red);
  return bad;
}

Test(shm, broadcast_1_rank) {
  cr_assert_eq(run_group(1, child_broadcast, NULL), 0);
}
Test(shm, broadcast_2_ranks) {
  cr_assert_eq(run_group(2, child_broadcast, NULL), 0);
}
Test(shm, broadcast_3_ranks) {
  cr_assert_eq(run_group(3, child_broadcast, NULL), 0);
}
Test(shm, broadcast_4_ranks) {
  cr_assert_eq(run_group(4, child_broadcast, NULL), 0);
}

static int first_diff(const char *a, const char *b, size_t count, size_t esz) {
  size_t i = 0;
  while (i < count && memcmp(a + i * esz, b + i * esz, esz) == 0)
    i++;
  return (int)i;
}

/* mode 0: out of place; 1: recvbuf == sendbuf (result at the start); 2:
 * recvbuf = sendbuf + rank x recvcount. Element i of block d of rank r's
 * sendbuf is input(op, r, d x recvcount + i). */
static int check_reduce_scatter(duet__shm_t *shm, int rank, int L, duet_datatype_t dt, duet_op_t op,
                                size_t count, int mode, unsigned salt, char *send, char *recv,
                                char *ref) {
  char err[DUET_SHM_ERRLEN];
  size_t esz = duet__dt_size(dt), bytes = count * esz, total = (size_t)L * bytes;
  int avg_n = L + 1;
  fill_input(send, (size_t)L * count, dt, op, rank, salt);
  memset(send + total, GUARD_BYTE, GUARD);
  memset(recv, GUARD_BYTE, bytes + GUARD);
  fill_reference(ref, (size_t)L * count, dt, op, L, avg_n, salt);
  char *out = mode == 0 ? recv : mode == 1 ? send : send + (size_t)rank * bytes;
  duet_status_t rc =
      duet__shm_reduce_scatter(shm, send, out, count, dt, op, avg_n, L > 2, CALL_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d reduce_scatter %s %s count %zu mode %d: %d %s\n", rank, L,
            duet__dt_name(dt), duet__op_name(op), count, mode, (int)rc, err);
    return 1;
  }
  if (memcmp(out, ref + (size_t)rank * bytes, bytes) != 0) {
    fprintf(stderr, "rank %d/%d reduce_scatter %s %s count %zu mode %d: element %d differs\n", rank,
            L, duet__dt_name(dt), duet__op_name(op), count, mode,
            first_diff(out, ref + (size_t)rank * bytes, count, esz));
    return 1;
  }
  if (guard_ok("reduce_scatter", rank, L, count,
               (unsigned char *)(mode ? send + total : recv + bytes)))
    return 1;
  /* Out of place nothing of sendbuf changes; in NCCL's form only this
   * rank's block does. */
  if (mode != 1) {
    fill_input(ref, (size_t)L * count, dt, op, rank, salt);
    for (int d = 0; d < L; d++)
      if ((mode == 0 || d != rank) &&
          memcmp(send + (size_t)d * bytes, ref + (size_t)d * bytes, bytes) != 0) {
        fprintf(stderr, "rank %d/%d reduce_scatter count %zu mode %d: sendbuf block %d modified\n",
                rank, L, count, mode, d);
        return 1;
      }
  }
  return 0;
}

/* (datatype, op) pairs covering every op on several datatypes. */
static const struct {
  duet_datatype_t dt;
  duet_op_t op;
} red_cases[] = {{DUET_INT32, DUET_SUM},    {DUET_FLOAT32, DUET_AVG}, {DUET_FLOAT64, DUET_PROD},
                 {DUET_BFLOAT16, DUET_MIN}, {DUET_INT8, DUET_MAX},    {DUET_INT32, DUET_AVG},
                 {DUET_BFLOAT16, DUET_AVG}, {DUET_FLOAT32, DUET_MAX}, {DUET_INT8, DUET_SUM},
                 {DUET_FLOAT64, DUET_MIN}};
#define N_RED_CASES (sizeof(red_cases) / sizeof(red_cases[0]))

static int child_reduce_scatter(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = 300007u * 8 * (size_t)L + GUARD;
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap), *red = malloc(cap);
  int bad = 0;
  unsigned salt = 0;
  if (send == NULL || recv == NULL || ref == NULL || red == NULL)
    _exit(91);
  for (size_t c = 0; c < N_RED_CASES && !bad; c++) {
    duet_datatype_t dt = red_cases[c].dt;
    size_t lim = EAGER_MAX / ((size_t)L * duet__dt_size(dt)); /* largest eager recvcount */
    size_t counts[] = {0, 1, 7, lim, lim + 1, c < 4 ? 300007u : 70001u};
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]) && !bad; k++)
      for (int mode = 0; mode < 3 && !bad; mode++) {
        bad |= check_reduce_scatter(shm, rank, L, dt, red_cases[c].op, counts[k], mode, salt++,
                                    send, recv, ref);
        if (!bad && (k + (size_t)mode) % 3 == 0)
          bad |= interleave(shm, rank, L, salt++, red, recv, ref);
      }
  }
  free(send);
  free(recv);
  free(ref);
  free(red);
  return bad;
}

Test(shm, reduce_scatter_1_rank) {
  cr_assert_eq(run_group(1, child_reduce_scatter, NULL), 0);
}
Test(shm, reduce_scatter_2_ranks) {
  cr_assert_eq(run_group(2, child_reduce_scatter, NULL), 0);
}
Test(shm, reduce_scatter_3_ranks) {
  cr_assert_eq(run_group(3, child_reduce_scatter, NULL), 0);
}
Test(shm, reduce_scatter_4_ranks) {
  cr_assert_eq(run_group(4, child_reduce_scatter, NULL), 0);
}

/* Root in place or not; non-roots pass NULL or a recvbuf that must stay
 * untouched. */
static int check_reduce(duet__shm_t *shm, int rank, int L, duet_datatype_t dt, duet_op_t op,
                        size_t count, int root, int in_place, unsigned salt, char *send, char *recv,
                        char *ref) {
  char err[DUET_SHM_ERRLEN];
  size_t esz = duet__dt_size(dt), bytes = count * esz;
  int avg_n = L + 1, me = rank == root;
  fill_input(send, count, dt, op, rank, salt);
  fill_reference(ref, count, dt, op, L, avg_n, salt);
  memset(recv, GUARD_BYTE, bytes + GUARD);
  if (me && in_place)
    memcpy(recv, send, bytes);
  void *rb = me || salt % 2 ? recv : NULL;
  duet_status_t rc = duet__shm_reduce(shm, me && in_place ? recv : send, rb, count, dt, op, avg_n,
                                      root, L > 2, CALL_TIMEOUT_MS, err);
  if (rc != DUET_SUCCESS) {
    fprintf(stderr, "rank %d/%d reduce %s %s count %zu root %d: %d %s\n", rank, L,
            duet__dt_name(dt), duet__op_name(op), count, root, (int)rc, err);
    return 1;
  }
  if (me && memcmp(recv, ref, bytes) != 0) {
    fprintf(stderr, "rank %d/%d reduce %s %s count %zu root %d %s: element %d differs\n", rank, L,
            duet__dt_name(dt), duet__op_name(op), count, root,
            in_place ? "in place" : "out of place", first_diff(recv, ref, count, esz));
    return 1;
  }
  for (size_t b = 0; b < bytes && !me; b++)
    if ((unsigned char)recv[b] != GUARD_BYTE) {
      fprintf(stderr, "rank %d/%d reduce count %zu root %d: non-root recvbuf written\n", rank, L,
              count, root);
      return 1;
    }
  if (guard_ok("reduce", rank, L, count, (unsigned char *)recv + bytes))
    return 1;
  if (!(me && in_place)) {
    fill_input(ref, count, dt, op, rank, salt);
    if (memcmp(send, ref, bytes) != 0) {
      fprintf(stderr, "rank %d/%d reduce count %zu: sendbuf modified\n", rank, L, count);
      return 1;
    }
  }
  return 0;
}

static int child_reduce(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  size_t cap = BIG_COUNT * 8 + 300001u * 4 * (size_t)L + GUARD;
  char *send = malloc(cap), *recv = malloc(cap), *ref = malloc(cap), *red = malloc(cap);
  int bad = 0;
  unsigned salt = 0;
  if (send == NULL || recv == NULL || ref == NULL || red == NULL)
    _exit(91);
  for (size_t c = 0; c < N_RED_CASES && !bad; c++) {
    duet_datatype_t dt = red_cases[c].dt;
    size_t lim = EAGER_MAX / duet__dt_size(dt); /* largest eager count */
    size_t counts[] = {0, 1, 7, lim, lim + 1, c < 4 ? BIG_COUNT : 300001u};
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]) && !bad; k++)
      for (int v = 0; v < 4 && !bad; v++) {
        int root = v % 2 ? L - 1 : 0;
        bad |= check_reduce(shm, rank, L, dt, red_cases[c].op, counts[k], root, v / 2, salt++, send,
                            recv, ref);
        if (!bad && (k + (size_t)v) % 3 == 0)
          bad |= interleave(shm, rank, L, salt++, red, recv, ref);
      }
  }
  free(send);
  free(recv);
  free(ref);
  free(red);
  return bad;
}

Test(shm, reduce_1_rank) {
  cr_assert_eq(run_group(1, child_reduce, NULL), 0);
}
Test(shm, reduce_2_ranks) {
  cr_assert_eq(run_group(2, child_reduce, NULL), 0);
}
Test(shm, reduce_3_ranks) {
  cr_assert_eq(run_group(3, child_reduce, NULL), 0);
}
Test(shm, reduce_4_ranks) {
  cr_assert_eq(run_group(4, child_reduce, NULL), 0);
}

/* Back-to-back small rooted calls, no other synchronisation: first
 * broadcasts from one root, then reduces to one root, then both with a
 * moving root; empty calls in between. A broadcast root or a reduce
 * non-root returns without waiting for its peers: without the ring's flow
 * control it would run ahead and rewrite a slot a slower peer still reads. */
static int child_rooted_stress(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  unsigned char send[256], recv[256 + GUARD];
  int32_t in[64], out[64];
  char err[DUET_SHM_ERRLEN];
  for (unsigned it = 0; it < 6000; it++) {
    int root = it < 2000 ? L - 1 : it < 4000 ? L - 2 : (int)(it % (unsigned)L);
    if (it < 2000 || it >= 4000) {
      size_t bytes = 1 + it % 256;
      for (size_t j = 0; j < bytes; j++)
        send[j] = ag_byte(root, j, it);
      memset(recv, 0, sizeof(recv));
      if (duet__shm_broadcast(shm, rank == root ? send : NULL, recv, bytes, root, L > 2,
                              CALL_TIMEOUT_MS, err) != DUET_SUCCESS ||
          memcmp(recv, send, bytes) != 0) {
        fprintf(stderr, "rank %d/%d broadcast %u (%zu B, root %d): wrong %s\n", rank, L, it, bytes,
                root, err);
        return 1;
      }
    }
    /* empty calls are no calls: they must not let a rank run ahead */
    if (it % 2 && (duet__shm_broadcast(shm, NULL, NULL, 0, root, L > 2, CALL_TIMEOUT_MS, err) !=
                       DUET_SUCCESS ||
                   duet__shm_reduce(shm, NULL, NULL, 0, DUET_INT32, DUET_SUM, L, root, L > 2,
                                    CALL_TIMEOUT_MS, err) != DUET_SUCCESS)) {
      fprintf(stderr, "rank %d/%d empty call %u: %s\n", rank, L, it, err);
      return 1;
    }
    if (it < 2000)
      continue;
    for (int j = 0; j < 64; j++)
      in[j] = (int32_t)(it * 7 + (unsigned)j) * (rank + 1);
    if (duet__shm_reduce(shm, in, out, 64, DUET_INT32, DUET_SUM, L, (root + 1) % L, L > 2,
                         CALL_TIMEOUT_MS, err) != DUET_SUCCESS) {
      fprintf(stderr, "rank %d/%d reduce %u: %s\n", rank, L, it, err);
      return 1;
    }
    for (int j = 0; j < 64 && rank == (root + 1) % L; j++)
      if (out[j] != (int32_t)(it * 7 + (unsigned)j) * (L * (L + 1) / 2)) {
        fprintf(stderr, "rank %d/%d reduce %u: element %d is %d\n", rank, L, it, j, (int)out[j]);
        return 1;
      }
  }
  return 0;
}

Test(shm, rooted_stress_2_ranks) {
  cr_assert_eq(run_group(2, child_rooted_stress, NULL), 0);
}
Test(shm, rooted_stress_3_ranks) {
  cr_assert_eq(run_group(3, child_rooted_stress, NULL), 0);
}
Test(shm, rooted_stress_4_ranks) {
  cr_assert_eq(run_group(4, child_rooted_stress, NULL), 0);
}

/* Eager broadcasts and reduces alternating, with moving roots, while one
 * rank sleeps at the start of every block of AHEAD_BLOCK calls. In the first
 * AHEAD_READ calls of a block the sleeper only reads (it is never the
 * broadcast root and always the reduce root), so the others run ahead until
 * the flow control stops them ROOTED_DEPTH calls ahead of it; a rank that
 * rewrote a ring slot the sleeper has not read yet would give it another
 * call's data. */
#define AHEAD_BLOCK (4 * ROOTED_DEPTH)
#define AHEAD_READ (2 * ROOTED_DEPTH + 8)
static int child_rooted_ahead(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  unsigned char send[2048], recv[2048 + GUARD];
  int32_t in[512], out[512 + 16];
  char err[DUET_SHM_ERRLEN];
  for (unsigned it = 0; it < 16 * AHEAD_BLOCK; it++) {
    int sleeper = (int)(it / AHEAD_BLOCK) % L, other = (sleeper + 1 + (int)(it / 2) % (L - 1)) % L;
    int reader_only = it % AHEAD_BLOCK < AHEAD_READ;
    if (rank == sleeper && it % AHEAD_BLOCK == 0)
      usleep(200);
    if (it % 2 == 0) {
      int root = reader_only ? other : (int)(it / 2) % L;
      size_t bytes = 1 + (it * 37u) % sizeof(send);
      for (size_t j = 0; j < bytes; j++)
        send[j] = ag_byte(root, j, it);
      memset(recv, 0, sizeof(recv));
      if (duet__shm_broadcast(shm, rank == root ? send : NULL, recv, bytes, root, L > 2,
                              CALL_TIMEOUT_MS, err) != DUET_SUCCESS ||
          memcmp(recv, send, bytes) != 0 || recv[bytes] != 0) {
        fprintf(stderr, "rank %d/%d broadcast %u (%zu B, root %d): wrong %s\n", rank, L, it, bytes,
                root, err);
        return 1;
      }
    } else {
      int root = reader_only ? sleeper : (int)(it / 2 + 1) % L;
      size_t count = 1 + (it * 13u) % 512u;
      for (size_t j = 0; j < count; j++)
        in[j] = (int32_t)((it * 31u + (unsigned)j) % 100000u) * (rank + 1);
      memset(out, 0, sizeof(out));
      if (duet__shm_reduce(shm, in, out, count, DUET_INT32, DUET_SUM, L, root, L > 2,
                           CALL_TIMEOUT_MS, err) != DUET_SUCCESS) {
        fprintf(stderr, "rank %d/%d reduce %u: %s\n", rank, L, it, err);
        return 1;
      }
      for (size_t j = 0; j < count && rank == root; j++)
        if (out[j] != (int32_t)((it * 31u + (unsigned)j) % 100000u) * (L * (L + 1) / 2)) {
          fprintf(stderr, "rank %d/%d reduce %u (root %d): element %zu is %d\n", rank, L, it, root,
                  j, (int)out[j]);
          return 1;
        }
    }
  }
  return 0;
}

Test(shm, rooted_ahead_2_ranks) {
  cr_assert_eq(run_group(2, child_rooted_ahead, NULL), 0);
}
Test(shm, rooted_ahead_3_ranks) {
  cr_assert_eq(run_group(3, child_rooted_ahead, NULL), 0);
}
Test(shm, rooted_ahead_4_ranks) {
  cr_assert_eq(run_group(4, child_rooted_ahead, NULL), 0);
}

/* Non-exact float32 sums: reduce and reduce-scatter reduce in rank order,
 * so their results equal a serial left-to-right sum bit for bit. */
static float rank_float(int rank, size_t i) {
  unsigned v = (unsigned)(i * 2654435761u) ^ (unsigned)(rank * 40503 + 7);
  v = v * 1103515245u + 12345u;
  return (float)(v >> 8) * 0x1p-13f - 1000.0f;
}

static int child_rank_order(duet__shm_t *shm, int rank, int L, void *arg) {
  (void)arg;
  static const size_t counts[] = {3, 500, 300001};
  size_t cap = 300001u * (size_t)L;
  float *send = malloc(cap * sizeof(float)), *recv = malloc(cap * sizeof(float));
  float *ref = malloc(cap * sizeof(float));
  char err[DUET_SHM_ERRLEN];
  if (send == NULL || recv == NULL || ref == NULL)
    _exit(91);
  for (size_t k = 0; k < 3; k++) {
    size_t n = counts[k] * (size_t)L;
    for (size_t i = 0; i < n; i++) {
      send[i] = rank_float(rank, i);
      ref[i] = rank_float(0, i);
      for (int p = 1; p < L; p++)
        ref[i] += rank_float(p, i);
    }
    if (duet__shm_reduce_scatter(shm, send, recv, counts[k], DUET_FLOAT32, DUET_SUM, L, L > 2,
                                 CALL_TIMEOUT_MS, err) != DUET_SUCCESS ||
        memcmp(recv, ref + (size_t)rank * counts[k], counts[k] * sizeof(float)) != 0) {
      fprintf(stderr, "rank %d/%d reduce_scatter %zu: not the rank-order sum %s\n", rank, L,
              counts[k], err);
      return 1;
    }
    if (duet__shm_reduce(shm, send, recv, n, DUET_FLOAT32, DUET_SUM, L, L - 1, L > 2,
                         CALL_TIMEOUT_MS, err) != DUET_SUCCESS ||
        (rank == L - 1 && memcmp(recv, ref, n * sizeof(float)) != 0)) {
      fprintf(stderr, "rank %d/%d reduce %zu: not the rank-order sum %s\n", rank, L, n, err);
      return 1;
    }
  }
  free(send);
  free(recv);
  free(ref);
  return 0;
}

Test(shm, rank_order_3_ranks) {
  cr_assert_eq(run_group(3, child_rank_order, NULL), 0);
}
Test(shm, rank_order_4_ranks) {
  cr_assert_eq(run_group(4, child_rank_order, NULL), 0);
}

/* ---- timeouts ---- */

#define SHORT_TIMEOUT_MS 500

enum { TC_ALLREDUCE, TC_ALLTOALL, TC_ALLGATHER, TC_BROADCAST, TC_REDUCE_SCATTER, TC_REDUCE };

struct timeout_case {
  size_t count; /* 0: barrier */
  int kind;     /* TC_*: count is elements (int32) or bytes per block */
};

/* The last rank never calls; the others must time out, naming it. Eager
 * broadcasts and reduces are rooted calls that do not wait for every peer:
 * there the absent rank is the root, and the others call until they time
 * out: at once for a broadcast (waiting for the root's data), after
 * ROOTED_DEPTH calls for a reduce (the flow control waits for the root to
 * have read the oldest ring slot). */
static int child_timeout(duet__shm_t *shm, int rank, int L, void *arg) {
  const struct timeout_case *tc = arg;
  char err[DUET_SHM_ERRLEN], want[64];
  static int32_t buf[1 << 20];
  duet_status_t rc;
  int rooted = (tc->kind == TC_BROADCAST && tc->count <= EAGER_MAX) ||
               (tc->kind == TC_REDUCE && tc->count * sizeof(int32_t) <= EAGER_MAX);
  unsigned calls = 0;
  if (rank == L - 1) {
    usleep(3 * SHORT_TIMEOUT_MS * 1000); /* outlive the others' deadline */
    return 0;
  }
  double t0 = now_s();
  if (rooted) {
    do {
      calls++;
      if (tc->kind == TC_BROADCAST)
        rc = duet__shm_broadcast(shm, buf, buf, tc->count, L - 1, 1, SHORT_TIMEOUT_MS, err);
      else
        rc = duet__shm_reduce(shm, buf, NULL, tc->count, DUET_INT32, DUET_AVG, L, L - 1, 1,
                              SHORT_TIMEOUT_MS, err);
    } while (rc == DUET_SUCCESS && calls <= 4 * ROOTED_DEPTH);
    unsigned expect = tc->kind == TC_BROADCAST ? 1u : ROOTED_DEPTH + 1u;
    if (rc == DUET_ERR_TIMEOUT && calls != expect) {
      fprintf(stderr, "rank %d: timed out in rooted call %u, want %u\n", rank, calls, expect);
      return 1;
    }
  } else if (tc->count == 0)
    rc = duet__shm_barrier(shm, 1, SHORT_TIMEOUT_MS, err);
  else if (tc->kind == TC_ALLTOALL)
    rc = duet__shm_alltoall(shm, buf, buf, tc->count, 1, SHORT_TIMEOUT_MS, err);
  else if (tc->kind == TC_ALLGATHER)
    rc = duet__shm_allgather(shm, buf, buf, tc->count, 1, SHORT_TIMEOUT_MS, err);
  else if (tc->kind == TC_BROADCAST)
    rc = duet__shm_broadcast(shm, buf, buf, tc->count, 0, 1, SHORT_TIMEOUT_MS, err);
  else if (tc->kind == TC_REDUCE_SCATTER)
    rc = duet__shm_reduce_scatter(shm, buf, buf, tc->count, DUET_INT32, DUET_SUM, L, 1,
                                  SHORT_TIMEOUT_MS, err);
  else if (tc->kind == TC_REDUCE)
    rc = duet__shm_reduce(shm, buf, buf, tc->count, DUET_INT32, DUET_AVG, L, 0, 1, SHORT_TIMEOUT_MS,
                          err);
  else
    rc = duet__shm_allreduce(shm, buf, buf, tc->count, DUET_INT32, DUET_SUM, L, 1, SHORT_TIMEOUT_MS,
                             err);
  double ms = (now_s() - t0) * 1e3;
  if (rc != DUET_ERR_TIMEOUT) {
    fprintf(stderr, "rank %d: status %d, want DUET_ERR_TIMEOUT (%s)\n", rank, (int)rc, err);
    return 1;
  }
  if (ms < SHORT_TIMEOUT_MS * 0.9 || ms > SHORT_TIMEOUT_MS + 1500) {
    fprintf(stderr, "rank %d: timed out after %.0f ms, deadline %d ms\n", rank, ms,
            SHORT_TIMEOUT_MS);
    return 1;
  }
  if (rooted)
    snprintf(want, sizeof(want), "local rank %d did not arrive for rooted call %u", L - 1, calls);
  else
    snprintf(want, sizeof(want), "local rank %d did not arrive for call 1", L - 1);
  if (strstr(err, want) == NULL) {
    fprintf(stderr, "rank %d: message \"%s\" lacks \"%s\"\n", rank, err, want);
    return 1;
  }
  rc = duet__shm_allreduce(shm, buf, buf, 1, DUET_INT32, DUET_SUM, L, 1, SHORT_TIMEOUT_MS, err);
  if (rc != DUET_ERR_ABORTED) {
    fprintf(stderr, "rank %d: call after a timeout: status %d, want DUET_ERR_ABORTED\n", rank,
            (int)rc);
    return 1;
  }
  return 0;
}

Test(shm, timeout_eager) {
  struct timeout_case tc = {1, TC_ALLREDUCE};
  cr_assert_eq(run_group(3, child_timeout, &tc), 0);
}
Test(shm, timeout_chunked) {
  struct timeout_case tc = {1 << 20, TC_ALLREDUCE};
  cr_assert_eq(run_group(2, child_timeout, &tc), 0);
}
Test(shm, timeout_alltoall_eager) {
  struct timeout_case tc = {16, TC_ALLTOALL};
  cr_assert_eq(run_group(3, child_timeout, &tc), 0);
}
Test(shm, timeout_alltoall_chunked) {
  struct timeout_case tc = {1 << 20, TC_ALLTOALL};
  cr_assert_eq(run_group(2, child_timeout, &tc), 0);
}
Test(shm, timeout_allgather_eager) {
  struct timeout_case tc = {100, TC_ALLGATHER};
  cr_assert_eq(run_group(3, child_timeout, &tc), 0);
}
Test(shm, timeout_allgather_chunked) {
  struct timeout_case tc = {1 << 20, TC_ALLGATHER};
  cr_assert_eq(run_group(2, child_timeout, &tc), 0);
}
Test(shm, timeout_broadcast_eager) {
  struct timeout_case tc = {100, TC_BROADCAST};
  cr_assert_eq(run_group(3, child_timeout, &tc), 0);
}
Test(shm, timeout_broadcast_chunked) {
  struct timeout_case tc = {3 << 20, TC_BROADCAST};
  cr_assert_eq(run_group(2, child_timeout, &tc), 0);
}
Test(shm, timeout_reduce_scatter_eager) {
  struct timeout_case tc = {10, TC_REDUCE_SCATTER};
  cr_assert_eq(run_group(3, child_timeout, &tc), 0);
}
Test(shm, timeout_reduce_scatter_chunked) {
  struct timeout_case tc = {1 << 18, TC_REDUCE_SCATTER};
  cr_assert_eq(run_group(2, child_timeout, &tc), 0);
}
Test(shm, timeout_reduce_eager) {
  struct timeout_case tc = {10, TC_REDUCE};
  cr_assert_eq(run_group(3, child_timeout, &tc), 0);
}
Test(shm, timeout_reduce_chunked) {
  struct timeout_case tc = {1 << 20, TC_REDUCE};
  cr_assert_eq(run_group(2, child_timeout, &tc), 0);
}
Test(shm, timeout_barrier) {
  struct timeout_case tc = {0, TC_ALLREDUCE};
  cr_assert_eq(run_group(3, child_timeout, &tc), 0);
}

/* A rank whose local rank 0 never creates the segment gives up in time. */
Test(shm, open_timeout) {
  char name[64], err[DUET_SHM_ERRLEN];
  duet__shm_t *shm = NULL;
  make_name(name, sizeof(name));
  double t0 = now_s();
  duet_status_t rc = duet__shm_open(&shm, name, 1, 2, 200, err);
  double ms = (now_s() - t0) * 1e3;
  cr_assert_eq(rc, DUET_ERR_TIMEOUT, "status %d: %s", (int)rc, err);
  cr_expect(ms >= 180 && ms < 2000, "gave up after %.0f ms", ms);
  cr_expect(shm == NULL);
  cr_expect(strstr(err, name) != NULL, "message \"%s\" lacks the name", err);
  cr_expect(!segment_exists(name));
}

/* The creator alone times out when nobody else attaches, and cleans up. */
Test(shm, open_alone_times_out) {
  char name[64], err[DUET_SHM_ERRLEN];
  duet__shm_t *shm = NULL;
  make_name(name, sizeof(name));
  duet_status_t rc = duet__shm_open(&shm, name, 0, 2, 200, err);
  if (rc == DUET_SUCCESS) { /* wrong, but leave nothing behind */
    duet__shm_unlink(shm);
    duet__shm_close(shm);
  }
  cr_assert_eq(rc, DUET_ERR_TIMEOUT, "status %d: %s", (int)rc, err);
  cr_expect(strstr(err, "local rank 1") != NULL, "message \"%s\"", err);
  cr_expect(!segment_exists(name));
}

Test(shm, bad_arguments) {
  char err[DUET_SHM_ERRLEN];
  duet__shm_t *shm = NULL;
  cr_expect_eq(duet__shm_open(&shm, "no-slash", 0, 1, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_expect_eq(duet__shm_open(&shm, "/x", 2, 2, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_expect_eq(duet__shm_open(&shm, "/x", 0, 0, 100, err), DUET_ERR_INVALID_ARGUMENT);

  char name[64];
  make_name(name, sizeof(name));
  duet_status_t rc = duet__shm_open(&shm, name, 0, 1, 100, err);
  shm_unlink(name);
  cr_assert_eq(rc, DUET_SUCCESS, "%s", err);
  duet__shm_unlink(shm);
  int x = 1;
  cr_expect_eq(duet__shm_allreduce(shm, &x, &x, 1, DUET_NUM_DATATYPES, DUET_SUM, 1, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_expect_eq(duet__shm_allreduce(shm, &x, &x, 1, DUET_INT32, DUET_NUM_OPS, 1, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_expect_eq(duet__shm_allreduce(shm, NULL, &x, 1, DUET_INT32, DUET_SUM, 1, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_expect_eq(duet__shm_allreduce(shm, NULL, NULL, 0, DUET_INT32, DUET_SUM, 1, 0, 100, err),
               DUET_SUCCESS);
  cr_expect_eq(duet__shm_alltoall(shm, NULL, &x, 4, 0, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "alltoall") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_alltoall(NULL, &x, &x, 4, 0, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_expect_eq(duet__shm_alltoall(shm, NULL, NULL, 0, 0, 100, err), DUET_SUCCESS);
  cr_expect_eq(duet__shm_allgather(shm, &x, NULL, 4, 0, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "allgather: recvbuf") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_allgather(shm, NULL, NULL, 0, 0, 100, err), DUET_SUCCESS);
  cr_expect_eq(duet__shm_broadcast(shm, &x, &x, 4, 1, 0, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "root 1") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_broadcast(shm, NULL, &x, 4, 0, 0, 100, err), DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "sendbuf") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_reduce_scatter(shm, &x, &x, 1, DUET_INT32, DUET_AVG, 0, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "avg_n") != NULL, "message \"%s\"", err);
  cr_expect_eq(
      duet__shm_reduce_scatter(shm, &x, &x, 1, DUET_NUM_DATATYPES, DUET_SUM, 1, 0, 100, err),
      DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "datatype") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_reduce(shm, &x, NULL, 1, DUET_INT32, DUET_SUM, 1, 0, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "recvbuf") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_reduce(shm, &x, &x, 1, DUET_INT32, DUET_NUM_OPS, 1, 0, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "op") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_reduce(shm, &x, &x, 1, DUET_INT32, DUET_SUM, 1, -1, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  cr_expect(strstr(err, "root -1") != NULL, "message \"%s\"", err);
  cr_expect_eq(duet__shm_reduce(shm, &x, &x, 1, DUET_INT32, DUET_AVG, 1, 0, 0, 100, err),
               DUET_SUCCESS);
  cr_expect_eq(duet__shm_reduce(NULL, &x, &x, 1, DUET_INT32, DUET_SUM, 1, 0, 0, 100, err),
               DUET_ERR_INVALID_ARGUMENT);
  duet__shm_close(shm);
  cr_expect(!segment_exists(name));
}

/* ---- placement on an oversubscribed host ---- */

typedef struct {
  int cpu[MAX_L];     /* where each rank ended */
  int mask_ok[MAX_L]; /* its CPU mask was place_mask again */
} place_report_t;

static int barriers_then_report(duet__shm_t *shm, int rank, int L, void *arg) {
  place_report_t *rep = arg;
  char err[DUET_SHM_ERRLEN];
  cpu_set_t now;
  (void)L;
  for (int i = 0; i < 400; i++)
    if (duet__shm_barrier(shm, 1, CALL_TIMEOUT_MS, err) != DUET_SUCCESS) {
      fprintf(stderr, "rank %d: barrier %d: %s\n", rank, i, err);
      return 1;
    }
  rep->cpu[rank] = sched_getcpu();
  rep->mask_ok[rank] = sched_getaffinity(0, sizeof(now), &now) == 0 && CPU_EQUAL(&now, &place_mask);
  return duet__shm_barrier(shm, 1, CALL_TIMEOUT_MS, err) == DUET_SUCCESS ? 0 : 1;
}

/* As if only the job's ranks were runnable: the host quiet, whatever else
 * runs beside this test (tests/unit/test_topo.c checks the refusal). */
static int quiet_host(void) {
  return 1;
}

/* Four ranks that may run on two CPUs start three on the first and one on
 * the second (the scheduler, with no idle CPU, can leave them so for tens
 * of milliseconds). The engine moves one so that each CPU has two, and
 * leaves every rank's CPU mask as it was. With one CPU there is nothing to
 * move: the ranks stay and the mask is kept. */
Test(shm, ranks_spread_over_cpus_masks_kept) {
  cpu_set_t all;
  int c[2], n = 0;
  cr_assert(sched_getaffinity(0, sizeof(all), &all) == 0);
  for (int i = 0; i < CPU_SETSIZE && n < 2; i++)
    if (CPU_ISSET(i, &all))
      c[n++] = i;
  if (n == 1)
    c[1] = c[0];
  CPU_ZERO(&place_mask);
  CPU_SET(c[0], &place_mask);
  CPU_SET(c[1], &place_mask);
  for (int r = 0; r < 4; r++)
    place_cpu[r] = r < 3 ? c[0] : c[1];
  place_report_t *rep =
      mmap(NULL, sizeof(*rep), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  cr_assert(rep != MAP_FAILED);
  place_set = 1;
  int (*running)(void) = duet__place_running;
  duet__place_running = quiet_host;
  int failed = run_group(4, barriers_then_report, rep);
  duet__place_running = running;
  place_set = 0;
  cr_assert_eq(failed, 0);
  int on_first = 0;
  for (int r = 0; r < 4; r++) {
    cr_expect(rep->mask_ok[r], "rank %d: CPU mask changed", r);
    cr_expect(rep->cpu[r] == c[0] || rep->cpu[r] == c[1], "rank %d on cpu %d", r, rep->cpu[r]);
    on_first += rep->cpu[r] == c[0];
  }
  if (n == 2)
    cr_expect_eq(on_first, 2, "%d of 4 ranks on cpu %d, %d on cpu %d after 400 barriers", on_first,
                 c[0], 4 - on_first, c[1]);
  else
    cr_expect_eq(on_first, 4);
  munmap(rep, sizeof(*rep));
}
