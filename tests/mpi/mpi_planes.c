/*
 * mpi_planes.c - collectives over an HPN of two planes, and one plane lost
 * in the middle of them (DESIGN.md section 4).
 *
 * Run with DUET_HPN_IFACE=<plane 0>,<plane 1> on a layout of two or more
 * super-nodes. Every round runs allreduce (small and 16 MiB: messages cut
 * across the planes), alltoall and allgather and compares each result with
 * MPI's own collective. With -k ADDR, in round 3 every rank posts a 16 MiB
 * iallreduce and a 1 MiB-per-peer ialltoall, and once all have posted
 * (an MPI barrier) rank 0 drives them a little and then resets every TCP
 * connection to or from ADDR, plane 1's address (ss -K, the kernel's socket
 * destroy), while their data is in flight. Every result must still be
 * right, the rounds after it too (plane 0 alone), and at the end no socket
 * may be left on ADDR: every rank closed the lost plane.
 *
 * With -x CMD as well, rank 0 runs the shell command CMD there instead of
 * the reset, e.g. "ip link set hpn1 down" on an emulated host of
 * tests/cluster/run_cluster.sh: a link that passes nothing, no error on any
 * socket, found only by the planes' probing (DUET_PLANE_TIMEOUT_MS). The
 * end check then counts the sockets on ADDR that a process still holds
 * (the closed ones may wait for the dead link to time out).
 *
 * First, on fresh connections, each rank in turn receives 1 MiB from each
 * rank of another super-node and then waits in an MPI barrier: the sender's
 * duet_send must return (fresh_lanes).
 *
 * Usage: mpi_planes [-k ADDR [-x CMD]] [-r ROUNDS]
 */
#include "mpi_common.h"

#define SMALL 1000
#define LARGE (4u << 20) /* floats: 16 MiB */
#define A2A (256u << 10) /* floats per peer: 1 MiB */

static int wrong;

static void expect(const float *got, const float *want, size_t n, int rank, int round,
                   const char *what) {
  if (memcmp(got, want, n * sizeof(float)) != 0) {
    fprintf(stderr, "[rank %d] round %d: %s differs from MPI's result\n", rank, round, what);
    wrong++;
  }
}

/* Sockets of this host with addr at either end; held: only those that a
 * process still holds. */
static int sockets_on(const char *addr, int held) {
  char cmd[256], line[512];
  int n = 0;
  FILE *f;
  snprintf(cmd, sizeof cmd, "ss -Htan%s exclude time-wait '( src %s or dst %s )'", held ? "p" : "",
           addr, addr);
  f = popen(cmd, "r");
  if (!f)
    return -1;
  while (fgets(line, sizeof line, f)) {
    if (held && strstr(line, "users:") == NULL)
      continue;
    fprintf(stderr, "[rank 0] still open: %s", line);
    n++;
  }
  return pclose(f) == 0 ? n : -1;
}

/* Before any other traffic: for each ordered pair of ranks in different
 * super-nodes in turn, one sends the other 1 MiB (a send that completes at
 * the receiver's ack) and then all meet in an MPI barrier. The receiver has
 * sent its peer nothing yet on any plane, so the ack goes on a lane still
 * to be connected; its receive must not return before the ack is out, as
 * the receiver then waits outside duet, and so would the sender, until its
 * deadline. */
static void fresh_lanes(duet_comm_t *comm, int rank, int size, float *buf, float *got) {
  int sn, nsn, lr, ls, *of = mt_xmalloc(sizeof(int) * (size_t)size);
  CHECK(comm, duet_comm_supernode(comm, &sn, &nsn, &lr, &ls));
  MPI_Allgather(&sn, 1, MPI_INT, of, 1, MPI_INT, MPI_COMM_WORLD);
  for (int dst = 0; dst < size; dst++)
    for (int src = 0; src < size; src++) {
      if (of[src] == of[dst])
        continue;
      if (rank == src) {
        for (size_t i = 0; i < A2A; i++)
          buf[i] = (float)((i * 5 + (size_t)src * 3 + (size_t)dst) % 11);
        CHECK(comm, duet_send(buf, A2A, DUET_FLOAT32, dst, comm));
      } else if (rank == dst) {
        CHECK(comm, duet_recv(got, A2A, DUET_FLOAT32, src, comm));
        for (size_t i = 0; i < A2A; i++)
          if (got[i] != (float)((i * 5 + (size_t)src * 3 + (size_t)dst) % 11)) {
            fprintf(stderr, "[rank %d] 1 MiB from rank %d: element %zu differs\n", rank, src, i);
            wrong++;
            break;
          }
      }
      MPI_Barrier(MPI_COMM_WORLD);
    }
  free(of);
}

int main(int argc, char **argv) {
  int rank, size, opt, rounds = 5, total = 0;
  const char *kill_addr = NULL, *kill_cmd = NULL;
  duet_unique_id_t id;
  duet_comm_t *comm;

  mt_init_mpi(&argc, &argv, &rank, &size);
  while ((opt = getopt(argc, argv, "k:r:x:")) != -1) {
    if (opt == 'k')
      kill_addr = optarg;
    else if (opt == 'x')
      kill_cmd = optarg;
    else if (opt == 'r')
      rounds = atoi(optarg);
  }
  const size_t all = (size_t)A2A * (size_t)size;
  float *send = mt_xmalloc((all > LARGE ? all : LARGE) * sizeof(float));
  float *got = mt_xmalloc((all > LARGE ? all : LARGE) * sizeof(float));
  float *want = mt_xmalloc((all > LARGE ? all : LARGE) * sizeof(float));
  float *got2 = mt_xmalloc(all * sizeof(float)), *want2 = mt_xmalloc(all * sizeof(float));

  memset(&id, 0, sizeof id);
  if (rank == 0)
    CHECK(NULL, duet_get_unique_id(&id));
  MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  CHECK(NULL, duet_comm_init_rank(&comm, size, id, rank, NULL));
  fresh_lanes(comm, rank, size, send, got);

  for (int round = 1; round <= rounds; round++) {
    size_t n = all > LARGE ? all : LARGE;
    for (size_t i = 0; i < n; i++) /* small integers: every sum is exact */
      send[i] = (float)((i * 7 + (size_t)rank * 3 + (size_t)round) % 13);
    if (kill_addr && round == 3) {
      duet_request_t *r1, *r2;
      int done = 0;
      MPI_Allreduce(send, want, LARGE, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      MPI_Alltoall(send, A2A, MPI_FLOAT, want2, A2A, MPI_FLOAT, MPI_COMM_WORLD);
      CHECK(comm, duet_iallreduce(send, got, LARGE, DUET_FLOAT32, DUET_SUM, comm, &r1));
      CHECK(comm, duet_ialltoall(send, got2, A2A, DUET_FLOAT32, comm, &r2));
      MPI_Barrier(MPI_COMM_WORLD);
      if (rank == 0) {
        char cmd[256];
        for (int k = 0; k < 20 && !done; k++)
          CHECK(comm, duet_test(r1, &done));
        if (done) {
          fprintf(stderr, "[rank 0] the 16 MiB allreduce ended before the failure\n");
          wrong++;
        }
        if (kill_cmd)
          snprintf(cmd, sizeof cmd, "%s", kill_cmd);
        else
          snprintf(cmd, sizeof cmd, "ss -K -t '( src %s or dst %s )' >/dev/null", kill_addr,
                   kill_addr);
        if (system(cmd) != 0) {
          fprintf(stderr, "[rank 0] %s failed\n", cmd);
          wrong++;
        }
      }
      if (!done)
        CHECK(comm, duet_wait(r1));
      CHECK(comm, duet_wait(r2));
      expect(got, want, LARGE, rank, round, "iallreduce across the failure");
      expect(got2, want2, all, rank, round, "ialltoall across the failure");
      continue;
    }
    MPI_Allreduce(send, want, SMALL, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(comm, duet_allreduce(send, got, SMALL, DUET_FLOAT32, DUET_SUM, comm));
    expect(got, want, SMALL, rank, round, "allreduce 1000");
    MPI_Allreduce(send, want, LARGE, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    CHECK(comm, duet_allreduce(send, got, LARGE, DUET_FLOAT32, DUET_SUM, comm));
    expect(got, want, LARGE, rank, round, "allreduce 16 MiB");
    MPI_Alltoall(send, A2A, MPI_FLOAT, want2, A2A, MPI_FLOAT, MPI_COMM_WORLD);
    CHECK(comm, duet_alltoall(send, got2, A2A, DUET_FLOAT32, comm));
    expect(got2, want2, all, rank, round, "alltoall 1 MiB per peer");
    MPI_Allgather(send, SMALL, MPI_FLOAT, want2, SMALL, MPI_FLOAT, MPI_COMM_WORLD);
    CHECK(comm, duet_allgather(send, got2, SMALL, DUET_FLOAT32, comm));
    expect(got2, want2, (size_t)SMALL * (size_t)size, rank, round, "allgather");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (kill_addr && rank == 0) {
    int left = sockets_on(kill_addr, kill_cmd != NULL);
    if (left != 0) {
      fprintf(stderr, "[rank 0] %d sockets still on %s: a rank kept the lost plane\n", left,
              kill_addr);
      wrong++;
    }
  }
  CHECK(comm, duet_comm_destroy(comm));
  MPI_Allreduce(&wrong, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0)
    printf("# mpi_planes np=%d, %d rounds%s%s%s%s: %d wrong\n", size, rounds,
           kill_addr ? ", plane lost in round 3: " : "", kill_addr ? kill_addr : "",
           kill_cmd ? " by " : "", kill_cmd ? kill_cmd : "", total);
  free(send), free(got), free(want), free(got2), free(want2);
  MPI_Finalize();
  return total != 0;
}
