/*
 * mpi_split.c - duet_comm_split against MPI_Comm_split: ranks, sizes,
 * super-node structure, an allreduce on each child checked against MPI on the
 * matching MPI communicator, the parent still usable in between, separate
 * statistics, DUET_SPLIT_NOCOLOR, and destroy in either order; calls on the
 * parent and on a child in flight together, waited for in a different order
 * on even and odd ranks (a rank waiting on one communicator must move the
 * other's calls, which its peers may be waiting for). On one host
 * with the default providers the children take the load/store path: their
 * collectives, blocking and not, send no UPN message.
 */
#include "mpi_common.h"

static int failures;

#define EXPECT(cond, ...)                                                      \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "[rank %d] %s:%d: ", world_rank, __FILE__, __LINE__);    \
      fprintf(stderr, __VA_ARGS__);                                            \
      fprintf(stderr, "\n");                                                   \
      failures++;                                                              \
    }                                                                          \
  } while (0)

static int world_rank, world_size;

/* Allreduce of int32 on a duet child and on the matching MPI communicator. */
static void check_allreduce(duet_comm_t *c, MPI_Comm m, size_t count) {
  int32_t *in = mt_xmalloc(count * 4 + 1), *got = mt_xmalloc(count * 4 + 1),
          *want = mt_xmalloc(count * 4 + 1);
  for (size_t i = 0; i < count; i++)
    in[i] = (int32_t)((world_rank + 1) * 1000 + (int)(i % 97));
  CHECK(c, duet_allreduce(in, got, count, DUET_INT32, DUET_SUM, c));
  MPI_Allreduce(in, want, (int)count, MPI_INT32_T, MPI_SUM, m);
  EXPECT(memcmp(got, want, count * 4) == 0, "child allreduce of %zu differs from MPI", count);
  free(in);
  free(got);
  free(want);
}

/* An iallreduce on `all` (the world's ranks, split from it) and one on
 * `world`: even ranks wait for all's first, odd ranks for world's. Then the
 * iallreduce on all again, and a blocking allreduce on world: even ranks
 * make the blocking call first, odd ranks wait first. */
static void check_crossed_waits(duet_comm_t *world, duet_comm_t *all, MPI_Comm mall, size_t count) {
  int32_t *in = mt_xmalloc(count * 4), *a = mt_xmalloc(count * 4), *w = mt_xmalloc(count * 4),
          *want = mt_xmalloc(count * 4);
  duet_request_t *qa, *qw;
  int even = world_rank % 2 == 0;
  for (size_t i = 0; i < count; i++)
    in[i] = (int32_t)(world_rank * 31 + (int)(i % 1009));
  MPI_Allreduce(in, want, (int)count, MPI_INT32_T, MPI_SUM, mall);

  memset(a, 0, count * 4);
  memset(w, 0, count * 4);
  CHECK(all, duet_iallreduce(in, a, count, DUET_INT32, DUET_SUM, all, &qa));
  CHECK(world, duet_iallreduce(in, w, count, DUET_INT32, DUET_SUM, world, &qw));
  CHECK(even ? all : world, duet_wait(even ? qa : qw));
  CHECK(even ? world : all, duet_wait(even ? qw : qa));
  EXPECT(memcmp(a, want, count * 4) == 0, "crossed waits, %zu: the child's result differs", count);
  EXPECT(memcmp(w, want, count * 4) == 0, "crossed waits, %zu: the parent's result differs", count);

  memset(a, 0, count * 4);
  memset(w, 0, count * 4);
  CHECK(all, duet_iallreduce(in, a, count, DUET_INT32, DUET_SUM, all, &qa));
  if (even)
    CHECK(world, duet_allreduce(in, w, count, DUET_INT32, DUET_SUM, world));
  CHECK(all, duet_wait(qa));
  if (!even)
    CHECK(world, duet_allreduce(in, w, count, DUET_INT32, DUET_SUM, world));
  EXPECT(memcmp(a, want, count * 4) == 0,
         "blocking call while a peer waits, %zu: the child's result differs", count);
  EXPECT(memcmp(w, want, count * 4) == 0,
         "blocking call while a peer waits, %zu: the parent's result differs", count);
  free(in);
  free(a);
  free(w);
  free(want);
}

int main(int argc, char **argv) {
  duet_comm_t *world, *child = NULL, *nocolor = (duet_comm_t *)0x1, *rev = NULL;
  MPI_Comm mchild, mrev;
  int color, r, n, sn, nsn, lr, ls, mr, mn, total;
  duet_stats_t st_child, st_world0, st_world1;

  mt_init_mpi(&argc, &argv, &world_rank, &world_size);
  world = mt_init_duet(world_rank, world_size);

  /* Split in two by parity, ranked in reverse. */
  color = world_rank % 2;
  CHECK(world, duet_comm_split(world, color, -world_rank, &child));
  MPI_Comm_split(MPI_COMM_WORLD, color, -world_rank, &mchild);
  EXPECT(child != NULL, "no child communicator");
  CHECK(child, duet_comm_rank(child, &r));
  CHECK(child, duet_comm_size(child, &n));
  MPI_Comm_rank(mchild, &mr);
  MPI_Comm_size(mchild, &mn);
  EXPECT(r == mr && n == mn, "child rank/size %d/%d, MPI says %d/%d", r, n, mr, mn);
  CHECK(child, duet_comm_supernode(child, &sn, &nsn, &lr, &ls));
  EXPECT(sn >= 0 && sn < nsn && lr >= 0 && lr < ls && ls <= n, "child super-node %d/%d %d/%d", sn,
         nsn, lr, ls);

  CHECK(world, duet_comm_get_stats(world, &st_world0));
  CHECK(child, duet_comm_get_stats(child, &st_child));
  check_allreduce(child, mchild, 7);
  check_allreduce(child, mchild, 100003);
  {
    /* a non-blocking one too, against MPI */
    int32_t in[1000], got[1000], want[1000];
    duet_request_t *q;
    for (int i = 0; i < 1000; i++)
      in[i] = world_rank * 7 + i;
    CHECK(child, duet_iallreduce(in, got, 1000, DUET_INT32, DUET_SUM, child, &q));
    CHECK(child, duet_wait(q));
    MPI_Allreduce(in, want, 1000, MPI_INT32_T, MPI_SUM, mchild);
    EXPECT(memcmp(got, want, sizeof(got)) == 0, "child iallreduce differs from MPI");
  }
  {
    const char *upn = getenv("DUET_UPN_PROVIDER");
    duet_stats_t now;
    CHECK(child, duet_comm_get_stats(child, &now));
    if (n > 1 && (!upn || !*upn || strcmp(upn, "mem") == 0) && !getenv("DUET_ALGO") &&
        !getenv("DUET_SUPERNODE"))
      EXPECT(now.upn_msgs_sent == st_child.upn_msgs_sent,
             "the child sent %llu UPN messages; on one host it takes the load/store path",
             (unsigned long long)(now.upn_msgs_sent - st_child.upn_msgs_sent));
  }
  /* The parent is still usable while the child lives. */
  check_allreduce(world, MPI_COMM_WORLD, 1001);
  CHECK(world, duet_comm_get_stats(world, &st_world1));
  CHECK(child, duet_comm_get_stats(child, &st_child));
  if (n > 1)
    EXPECT(st_child.upn_bytes_sent + st_child.hpn_bytes_sent > 0, "child counted no traffic");
  /* The parent's counters grew by its own allreduce, not by the child's. */
  total = world_size > 1;
  if (total)
    EXPECT(st_world1.upn_bytes_sent + st_world1.hpn_bytes_sent -
                   (st_world0.upn_bytes_sent + st_world0.hpn_bytes_sent) <
               (uint64_t)1001 * 4 * 4,
           "parent counted the child's traffic");

  /* Calls on the parent and on a child in flight together: each rank waits
   * for them in an order of its own, or makes a blocking call on one while
   * its peers wait for the other. */
  {
    duet_comm_t *all = NULL;
    MPI_Comm mall;
    CHECK(world, duet_comm_split(world, 0, world_rank, &all));
    MPI_Comm_split(MPI_COMM_WORLD, 0, world_rank, &mall);
    check_crossed_waits(world, all, mall, 8);
    check_crossed_waits(world, all, mall, 100003);
    CHECK(all, duet_comm_destroy(all));
    MPI_Comm_free(&mall);
  }

  /* A split of the child: everyone together, order reversed again. */
  CHECK(child, duet_comm_split(child, 0, -r, &rev));
  MPI_Comm_split(mchild, 0, -mr, &mrev);
  check_allreduce(rev, mrev, 513);

  /* DUET_SPLIT_NOCOLOR on odd ranks of the world. */
  CHECK(world, duet_comm_split(world, world_rank % 2 ? DUET_SPLIT_NOCOLOR : 5, 0, &nocolor));
  if (world_rank % 2)
    EXPECT(nocolor == NULL, "DUET_SPLIT_NOCOLOR gave a communicator");
  else {
    EXPECT(nocolor != NULL, "color 5 gave no communicator");
    CHECK(nocolor, duet_barrier(nocolor));
    CHECK(nocolor, duet_comm_destroy(nocolor));
  }
  /* Bad input. */
  EXPECT(duet_comm_split(world, -5, 0, &nocolor) == DUET_ERR_INVALID_ARGUMENT, "color -5 accepted");
  EXPECT(duet_comm_split(world, 0, 0, NULL) == DUET_ERR_INVALID_ARGUMENT, "NULL newcomm accepted");

  /* Destroy the parent first: the children keep working. */
  CHECK(world, duet_comm_destroy(world));
  check_allreduce(rev, mrev, 65);
  CHECK(rev, duet_comm_destroy(rev));
  CHECK(child, duet_comm_destroy(child));
  MPI_Comm_free(&mrev);
  MPI_Comm_free(&mchild);

  MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (world_rank == 0)
    printf("# mpi_split np=%d: %s (%d failures)\n", world_size, failures ? "FAILED" : "OK",
           failures);
  MPI_Finalize();
  return failures ? 1 : 0;
}
