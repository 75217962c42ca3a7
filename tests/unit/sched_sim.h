/*
 * sched_sim.h - execute the schedules of p ranks in memory, in a random
 * order, with no network: sends deliver their bytes only when matched (as a
 * rendezvous transport would), so a missing dependency shows up as a wrong
 * answer, a missing match as an error, and a cycle of waits as a deadlock.
 */
#ifndef DUET_SCHED_SIM_H
#define DUET_SCHED_SIM_H

#include <stdint.h>

#include "coll/schedule.h"

typedef struct sim_rank {
  duet__sched_t sched;
  uint8_t *send, *recv; /* send may equal recv (in place) */
  uint64_t send_bytes, recv_bytes;
  uint8_t *scratch; /* allocated by sim_run from sched.scratch_bytes */
  uint64_t heard;   /* ranks this rank has heard from, directly or not (p <= 64) */
} sim_rank_t;

/* Run to completion. Returns 0, or -1 with a reason in err. */
int sim_run(sim_rank_t *ranks, int p, duet_datatype_t dt, duet_op_t op, unsigned seed, char *err,
            size_t errlen);

#endif
