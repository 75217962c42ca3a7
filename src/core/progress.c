/*
 * progress.c - requests and the progress engine that executes schedules.
 *
 * A request owns one schedule and its execution state. Steps whose
 * dependencies are done enter a FIFO; local steps (reduce, copy, avg) run at
 * once, sends and receives are posted to the transport of the peer's network
 * and finish when the transport marks them done. Progress is resumable: every
 * call does what it can and returns. Blocking calls are post + wait, and
 * every wait has the communicator's deadline.
 */
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "core/log.h"
#include "reduce/reduce.h"
#include "topo/topo.h"

/* An oversubscribed rank waiting for a request sleeps on its networks' wait
 * descriptors after this many polls in a row found nothing to do, for at
 * most DUET_IDLE_SLEEP_MS at a time (so it still checks its deadline). */
#define DUET_IDLE_POLLS 4
#define DUET_IDLE_SLEEP_MS 20

static void duet__active_remove(duet_comm_t *comm, duet_request_t *req) {
  if (req->prev)
    req->prev->next = req->next;
  else if (comm->active_head == req)
    comm->active_head = req->next;
  if (req->next)
    req->next->prev = req->prev;
  else if (comm->active_tail == req)
    comm->active_tail = req->prev;
  req->next = req->prev = NULL;
}

/* req no longer uses its region of the communicator's scratch. */
static void duet__scratch_leave(duet_comm_t *comm, duet_request_t *req) {
  if (!req->uses_comm_scratch)
    return;
  if (req->scratch_gen == comm->scratch_gen)
    comm->scratch_users--;
  req->uses_comm_scratch = 0;
}

/* Queue slots: a send or receive step's network and kind (0 send, 1 receive). */
static duet__net_t *duet__step_queue(const duet_request_t *req, const duet__step_t *st, int *kind) {
  if (st->kind != DUET_STEP_SEND && st->kind != DUET_STEP_RECV)
    return NULL;
  *kind = st->kind == DUET_STEP_RECV;
  return &req->comm->nets->net[st->net];
}

static void duet__queue_release(const duet_request_t *req, uint32_t i) {
  int kind;
  duet__net_t *net = duet__step_queue(req, &req->sched->steps[i], &kind);
  if (net != NULL && net->queued[kind] > 0)
    net->queued[kind]--;
}

static void duet__request_finish(duet_request_t *req, duet_status_t status) {
  duet_comm_t *comm = req->comm;
  /* a failed call's transfers still posted no longer count against the
   * queues: the call waits for none of them */
  for (uint32_t k = 0; k < req->nposted; k++)
    duet__queue_release(req, req->posted[k]);
  req->status = status;
  req->complete = 1;
  duet__active_remove(comm, req);
  /* a failed call's transfers may still land in its region: it keeps it
   * until freed (duet__request_free) */
  if (status == DUET_SUCCESS || req->nposted == 0)
    duet__scratch_leave(comm, req);
}

/* Mark step i done and release the steps that waited for it. */
static void duet__step_done(duet_request_t *req, uint32_t i) {
  const duet__sched_t *s = req->sched;
  const duet__step_t *st = &s->steps[i];
  req->state[i] = 3;
  req->ndone++;
  for (uint32_t o = 0; o < st->nout; o++) {
    uint32_t j = s->outs[st->out_first + o];
    if (--req->left[j] == 0) {
      req->state[j] = 1;
      req->queue[req->nready++] = j;
    }
  }
}

static uint64_t duet__step_tag(const duet_request_t *req, const duet__step_t *st) {
  if (req->coll == DUET_COLL_SEND || req->coll == DUET_COLL_RECV)
    return duet__tag_p2p(req->comm->id, req->p2p_seq);
  return duet__tag_coll(req->comm->id, req->seq, st->msg);
}

static duet_status_t duet__step_fail(duet_request_t *req, duet_status_t status, const char *what,
                                     const duet__step_t *st, const char *detail) {
  duet_comm_t *comm = req->comm;
  duet__set_error(comm, status, "%s seq %u on rank %d: %s %s rank %d (msg %u, %llu bytes, %s): %s",
                  duet__coll_name(req->coll), req->seq, comm->rank, what,
                  st->kind == DUET_STEP_SEND ? "to" : "from", st->peer, st->msg,
                  (unsigned long long)st->len, duet__net_name(st->net), detail);
  DUET_WARN(DUET_SUB_COLL, "%s", comm->last_error);
  return status;
}

/* Run one step that became ready. Returns DUET_SUCCESS when it was run or
 * posted, DUET_IN_PROGRESS when the transport is busy (retry later). */
static duet_status_t duet__step_start(duet_request_t *req, uint32_t i) {
  duet_comm_t *comm = req->comm;
  const duet__step_t *st = &req->sched->steps[i];
  char errbuf[DUET_TP_ERRLEN] = "";
  duet_status_t rc;

  switch (st->kind) {
  case DUET_STEP_SEND:
  case DUET_STEP_RECV: {
    duet__net_t *net = &comm->nets->net[st->net];
    const duet__peer_t *peer = &comm->peers[st->peer];
    uint64_t tag = duet__step_tag(req, st);
    req->tpreq[i].done = 0;
    if (st->kind == DUET_STEP_SEND)
      rc = net->ops->isend(net->ep, peer->index, req->bufs[st->a.buf] + st->a.off, st->len, tag,
                           &req->tpreq[i], errbuf);
    else
      rc = net->ops->irecv(net->ep, peer->index, req->bufs[st->dst.buf] + st->dst.off, st->len, tag,
                           &req->tpreq[i], errbuf);
    if (rc == DUET_IN_PROGRESS)
      return rc;
    if (rc != DUET_SUCCESS)
      return duet__step_fail(req, rc, st->kind == DUET_STEP_SEND ? "send" : "receive", st, errbuf);
    if (st->kind == DUET_STEP_SEND) {
      if (st->net == DUET_NET_UPN) {
        comm->stats.upn_bytes_sent += st->len;
        comm->stats.upn_msgs_sent++;
      } else if (st->net == DUET_NET_HPN) {
        comm->stats.hpn_bytes_sent += st->len;
        comm->stats.hpn_msgs_sent++;
      }
    }
    net->queued[st->kind == DUET_STEP_RECV]++;
    req->state[i] = 2;
    req->posted[req->nposted++] = i;
    return DUET_SUCCESS;
  }
  case DUET_STEP_REDUCE:
    duet__reduce(req->bufs[st->dst.buf] + st->dst.off, req->bufs[st->a.buf] + st->a.off,
                 req->bufs[st->b.buf] + st->b.off, st->len / duet__dt_size(req->dt), req->dt,
                 req->op);
    break;
  case DUET_STEP_COPY: {
    uint8_t *d = req->bufs[st->dst.buf] + st->dst.off, *src = req->bufs[st->a.buf] + st->a.off;
    if (d != src) /* the same memory when the caller worked in place */
      memcpy(d, src, st->len);
    break;
  }
  case DUET_STEP_NOP:
    break;
  case DUET_STEP_GATE:
    if (st->msg < req->gates_open)
      break;
    /* wait as a transfer does: duet__request_open_gate completes it */
    req->tpreq[i].status = DUET_SUCCESS;
    req->tpreq[i].done = 0;
    req->state[i] = 2;
    req->posted[req->nposted++] = i;
    return DUET_SUCCESS;
  case DUET_STEP_AVG:
    duet__reduce_avg_finish(req->bufs[st->dst.buf] + st->dst.off, st->len / duet__dt_size(req->dt),
                            req->dt, comm->nranks);
    break;
  default:
    return duet__set_error(comm, DUET_ERR_INTERNAL, "step %u has unknown kind %d", i, st->kind);
  }
  duet__step_done(req, i);
  return DUET_SUCCESS;
}

/*
 * Sharing a transport's queues. A provider holds so many posted sends and
 * so many posted receives (libfabric's tx and rx sizes); past that it says
 * busy. Calls in flight together could fill them between them with
 * transfers that wait on each other: one rank's sends queue full of a later
 * call's sends, which wait for receives its peers cannot post, their
 * receive queues being full of an earlier call's receives, which wait for
 * the first rank's sends of that call, which it cannot post. So only the
 * oldest call on the endpoints (the one posted first, on every rank the
 * same call when the ranks post in the same order) may fill a queue past
 * half; the others post into the first half only. The oldest call can then
 * always move on every rank, and when it completes the next is oldest.
 * Without it, 4 allreduces of 128 MiB in flight over tcp;ofi_rxm with
 * queues of 64 timed out at np 2.
 */
static int duet__request_oldest(const duet_request_t *req) {
  for (const duet_comm_t *m = req->comm->nets->members; m != NULL; m = m->family_next)
    if (m->active_head != NULL && m->active_head->post_order < req->post_order)
      return 0;
  return 1;
}

/* Advance one request as far as it goes now. Returns 1 if anything moved. */
static int duet__request_advance(duet_request_t *req) {
  int moved = 0;
  duet_status_t rc;

  /* Harvest completed transfers. */
  for (uint32_t k = 0; k < req->nposted;) {
    uint32_t i = req->posted[k];
    duet__tp_req_t *t = &req->tpreq[i];
    const duet__step_t *st = &req->sched->steps[i];
    if (!t->done) {
      k++;
      continue;
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    req->posted[k] = req->posted[--req->nposted];
    duet__queue_release(req, i);
    moved = 1;
    if (t->status != DUET_SUCCESS) {
      char *why = req->comm->nets->net[st->net].lasterr; /* the transport's, if it said */
      duet__step_fail(req, t->status, st->kind == DUET_STEP_SEND ? "send" : "receive", st,
                      t->status == DUET_ERR_MISMATCH ? "message and receive differ in length: "
                                                       "ranks called with different arguments"
                      : why[0]                       ? why
                                                     : "transfer failed");
      why[0] = '\0';
      duet__request_finish(req, t->status);
      return 1;
    }
    if (st->kind == DUET_STEP_RECV) {
      if (t->len != st->len) {
        char detail[128];
        snprintf(detail, sizeof(detail),
                 "got %zu bytes: ranks called with different counts or types", t->len);
        duet__step_fail(req, DUET_ERR_MISMATCH, "receive", st, detail);
        duet__request_finish(req, DUET_ERR_MISMATCH);
        return 1;
      }
      if (st->net == DUET_NET_UPN)
        req->comm->stats.upn_bytes_recv += st->len;
      else if (st->net == DUET_NET_HPN)
        req->comm->stats.hpn_bytes_recv += st->len;
    }
    duet__step_done(req, i);
  }
  /* Start what is ready, in order. A transport that says it is busy (its
   * queue of posted transfers is full) holds back only the transfers of
   * that kind on that network, which keep their order at the front of the
   * queue; the rest still start. So a rank whose sends wait for room still
   * posts the receives its peers' sends wait for: stopping at the first
   * busy send left two ranks each waiting for the other (an allreduce of
   * over 1 GiB over tcp;ofi_rxm, whose queues hold 2048, never finished). */
  uint32_t keep = 0;
  unsigned busy = 0; /* bit 2 * net + (kind == RECV): busy in this pass */
  int oldest = -1;   /* whether req is the oldest call on its endpoints; -1: not asked yet */
  for (uint32_t q = 0; q < req->nready; q++) {
    uint32_t i = req->queue[q];
    const duet__step_t *st = &req->sched->steps[i];
    int kind;
    const duet__net_t *net = duet__step_queue(req, st, &kind);
    unsigned bit = net != NULL ? 1u << (2 * st->net + kind) : 0;
    if (!(bit & busy) && net != NULL && net->queue_max[kind] != 0 &&
        net->queued[kind] >= net->queue_max[kind] - net->queue_max[kind] / 2) {
      if (oldest < 0)
        oldest = duet__request_oldest(req);
      if (!oldest)
        busy |= bit; /* the rest of the queue is the oldest call's */
    }
    if (bit & busy) {
      req->queue[keep++] = i;
      continue;
    }
    rc = duet__step_start(req, i); /* may append steps it made ready */
    if (rc == DUET_IN_PROGRESS) {
      busy |= bit;
      req->queue[keep++] = i;
      continue;
    }
    moved = 1;
    if (rc != DUET_SUCCESS) {
      duet__request_finish(req, rc);
      return 1;
    }
  }
  req->nready = keep;
  if (req->ndone == req->sched->nsteps)
    duet__request_finish(req, DUET_SUCCESS);
  return moved;
}

static int duet__family_progress(duet_comm_t *comm);

/* Drive every network, then every active request; *moved says whether any
 * request advanced. Returns a negative status only when the communicator
 * itself failed. */
duet_status_t duet__progress_once(duet_comm_t *comm, int *moved) {
  char errbuf[DUET_TP_ERRLEN] = "";

  *moved = 0;
  for (int n = 0; n < DUET_NET_COUNT; n++) {
    duet__net_t *net = &comm->nets->net[n];
    duet_status_t rc;
    if (net->ep == NULL)
      continue;
    rc = net->ops->progress(net->ep, net->lasterr);
    if (rc < 0) {
      snprintf(errbuf, sizeof(errbuf), "%s", net->lasterr);
      duet__set_error(comm, rc, "rank %d: %s network failed: %s", comm->rank, duet__net_name(n),
                      errbuf);
      DUET_WARN(DUET_SUB_NET, "%s", comm->last_error);
      duet__comm_fail_pending(comm, rc);
      return rc;
    }
  }
  for (duet_request_t *req = comm->active_head, *next; req != NULL; req = next) {
    next = req->next;
    *moved |= duet__request_advance(req);
  }
  if (comm->mem_head != NULL)
    *moved |= duet__mem_progress(comm, 0);
  if (comm->family_next != NULL || comm->nets->members != comm)
    *moved |= duet__family_progress(comm);
  return DUET_SUCCESS;
}

/* Whether a communicator sharing comm's endpoints, other than comm, has
 * calls posted that its own progress could move now. Not one whose task is
 * running (the fiber is on the stack) nor one that failed. */
static int duet__family_member_ready(const duet_comm_t *comm, const duet_comm_t *c) {
  return c != comm && c->failed == DUET_SUCCESS && !c->mem_in_task &&
         (c->active_head != NULL || c->mem_head != NULL);
}

/*
 * The calls of the other communicators on comm's endpoints (split from one
 * another) move whenever comm's do. Each rank may wait for its calls in an
 * order of its own, or make a blocking call while calls on another
 * communicator are posted, as MPI allows: a rank waiting on comm may be the
 * one a peer of another member waits for, and the wait must not end in a
 * timeout. One pass at a time (a member's progress does not start another).
 */
static int duet__family_progress(duet_comm_t *comm) {
  duet__netset_t *nets = comm->nets;
  int moved = 0;
  if (nets->family_pass)
    return 0;
  nets->family_pass = 1;
  for (duet_comm_t *c = nets->members; c != NULL; c = c->family_next)
    if (duet__family_member_ready(comm, c)) {
      int m = 0;
      duet__progress_once(c, &m); /* a failure stays with c, for its own calls */
      moved |= m;
    }
  nets->family_pass = 0;
  return moved;
}

/* The load/store path's waits call this (duet__shm_set_idle): comm is in a
 * blocking call there, which drives nothing else. */
void duet__family_idle(void *arg) {
  duet__family_progress(arg);
}

/* Whether a member of comm's family has a load/store call queued: its
 * peers, not a network, will move it (so a waiter yields, not sleeps). */
static int duet__family_mem_pending(const duet_comm_t *comm) {
  if (comm->mem_head != NULL)
    return 1;
  for (const duet_comm_t *c = comm->nets->members; c != NULL; c = c->family_next)
    if (c->mem_head != NULL)
      return 1;
  return 0;
}

duet_status_t duet__progress(duet_comm_t *comm) {
  int moved;
  duet_status_t rc = duet__progress_once(comm, &moved);
  if (rc == DUET_SUCCESS && !moved && comm->yield)
    sched_yield();
  return rc;
}

/* An oversubscribed rank with nothing to do sleeps until one of its networks
 * has work, at most max_ms: spinning, even with sched_yield, takes CPU time
 * from the ranks it waits for. It polls the networks' wait descriptors when
 * every network has one and says blocking is safe; otherwise it yields. */
static void duet__idle_sleep(duet_comm_t *comm, int max_ms) {
  struct pollfd fds[DUET_NET_COUNT];
  int nfds = 0;

  for (int n = 0; n < DUET_NET_COUNT; n++) {
    duet__net_t *net = &comm->nets->net[n];
    char errbuf[DUET_TP_ERRLEN];
    int fd = -1;
    duet_status_t rc;
    if (net->ep == NULL)
      continue;
    if (net->ops->wait_fd == NULL) {
      sched_yield();
      return;
    }
    rc = net->ops->wait_fd(net->ep, &fd, errbuf);
    if (rc != DUET_SUCCESS) { /* work is waiting, or no descriptor */
      sched_yield();
      return;
    }
    if (fd >= 0) {
      fds[nfds].fd = fd;
      fds[nfds].events = POLLIN;
      fds[nfds].revents = 0;
      nfds++;
    }
  }
  if (nfds == 0 || max_ms <= 0) {
    sched_yield();
    return;
  }
  (void)poll(fds, (nfds_t)nfds, max_ms);
}

/* The cached schedule for these arguments, or DUET_SCHED_CACHE. */
static int duet__cache_find(duet_comm_t *comm, const duet__sched_key_t *k) {
  for (int i = 0; i < DUET_SCHED_CACHE; i++)
    if (comm->cache[i].valid && memcmp(&comm->cache[i].key, k, sizeof(*k)) == 0)
      return i;
  return DUET_SCHED_CACHE;
}

/* Keep a freshly built schedule in the least recently used free entry. */
static int duet__cache_insert(duet_comm_t *comm, const duet__sched_key_t *k, duet__sched_t *s) {
  int victim = -1;
  for (int i = 0; i < DUET_SCHED_CACHE; i++) {
    duet__cache_entry_t *e = &comm->cache[i];
    if (e->users > 0)
      continue;
    if (!e->valid) {
      victim = i;
      break;
    }
    if (victim < 0 || e->last_use < comm->cache[victim].last_use)
      victim = i;
  }
  if (victim < 0)
    return -1;
  if (comm->cache[victim].valid)
    duet__sched_fini(&comm->cache[victim].sched);
  comm->cache[victim].valid = 1;
  comm->cache[victim].key = *k;
  comm->cache[victim].sched = *s;
  duet__sched_init(s);
  return victim;
}

/* Room for cap steps in req's arrays; -1 (req unchanged where it failed)
 * when out of memory. */
static int duet__request_grow(duet_request_t *req, uint32_t cap) {
  void *l = realloc(req->left, cap * sizeof(*req->left));
  if (l)
    req->left = l;
  void *st = realloc(req->state, cap);
  if (st)
    req->state = st;
  void *t = realloc(req->tpreq, cap * sizeof(*req->tpreq));
  if (t)
    req->tpreq = t;
  void *q = realloc(req->queue, cap * sizeof(*req->queue));
  if (q)
    req->queue = q;
  void *po = realloc(req->posted, cap * sizeof(*req->posted));
  if (po)
    req->posted = po;
  if (!l || !st || !t || !q || !po)
    return -1;
  req->cap = cap;
  return 0;
}

/* A request with room for n steps, from the pool. Every request of a
 * communicator has room for its largest schedule so far (comm->req_cap):
 * when that grows, the pooled requests grow with it, and the others when
 * they come back (duet__request_free). So the requests grow only while
 * larger schedules appear, however many calls are in flight and in whatever
 * order the requests return. */
duet_request_t *duet__request_get(duet_comm_t *comm, uint32_t n) {
  duet_request_t *req = comm->free_reqs;
  if (req != NULL)
    comm->free_reqs = req->next;
  else if ((req = calloc(1, sizeof(*req))) == NULL)
    return NULL;
  if (n + 1 > comm->req_cap) {
    comm->req_cap = n + 1 > 2 * comm->req_cap ? n + 1 : 2 * comm->req_cap;
    for (duet_request_t *r = comm->free_reqs; r != NULL; r = r->next)
      (void)duet__request_grow(r, comm->req_cap); /* else when it is next taken */
  }
  if (req->cap < comm->req_cap && duet__request_grow(req, comm->req_cap) != 0 &&
      req->cap < n + 1) {
    req->next = comm->free_reqs; /* keep what it has; try again another time */
    comm->free_reqs = req;
    return NULL;
  }
  return req;
}

void duet__request_reset(duet_request_t *req, duet_comm_t *comm, int coll, duet_datatype_t dt,
                         duet_op_t op) {
  req->comm = comm;
  req->coll = coll;
  req->dt = dt;
  req->op = op;
  req->sched = NULL;
  req->cache_slot = -1;
  req->uses_comm_scratch = 0;
  req->nready = req->nposted = req->ndone = 0;
  req->status = DUET_SUCCESS;
  req->complete = 0;
  req->next = req->prev = NULL;
  req->seq = 0;
  req->p2p_seq = 0;
  req->gates_open = 0;
  req->mem = req->mem_hier = 0;
  req->mem_next = NULL;
}

void *duet__shelf_take(duet__shelf_t *sh, size_t need, size_t *got) {
  int best = -1;
  for (int i = 0; i < DUET_SHELF; i++)
    if (sh->buf[i] != NULL && sh->size[i] >= need && (best < 0 || sh->size[i] < sh->size[best]))
      best = i;
  if (best < 0) {
    *got = need;
    return malloc(need);
  }
  void *b = sh->buf[best];
  *got = sh->size[best];
  sh->buf[best] = NULL;
  sh->size[best] = 0;
  return b;
}

void duet__shelf_put(duet__shelf_t *sh, void *buf, size_t size) {
  int low = 0;
  if (buf == NULL)
    return;
  for (int i = 0; i < DUET_SHELF; i++) {
    if (sh->buf[i] == NULL) {
      low = i;
      break;
    }
    if (sh->size[i] < sh->size[low])
      low = i;
  }
  if (sh->buf[low] != NULL && sh->size[low] >= size) {
    free(buf);
    return;
  }
  free(sh->buf[low]);
  sh->buf[low] = buf;
  sh->size[low] = size;
}

static void duet__shelf_clear(duet__shelf_t *sh) {
  for (int i = 0; i < DUET_SHELF; i++) {
    free(sh->buf[i]);
    sh->buf[i] = NULL;
    sh->size[i] = 0;
  }
}

void duet__scratch_release(duet_comm_t *comm) {
  duet__shelf_clear(&comm->scratch_shelf);
  duet__shelf_clear(&comm->counts_shelf);
  free(comm->scratch);
  comm->scratch = NULL;
  comm->scratch_size = 0;
}

/* A region of need bytes of the communicator's scratch for req: the whole
 * scratch, grown if need be, when no call uses it; otherwise at its start
 * if the calls in flight left that much free there, or past their regions.
 * req->uses_comm_scratch stays 0 when neither has room. */
static duet_status_t duet__scratch_place(duet_comm_t *comm, duet_request_t *req, size_t need) {
  size_t off = 0;
  if (comm->scratch_users == 0) {
    if (comm->scratch_size < need) { /* grown rarely */
      size_t got;
      uint8_t *ns = duet__shelf_take(&comm->scratch_shelf, need, &got);
      if (ns == NULL)
        return DUET_ERR_NO_MEMORY;
      duet__shelf_put(&comm->scratch_shelf, comm->scratch, comm->scratch_size);
      comm->scratch = ns;
      comm->scratch_size = got;
    }
  } else {
    size_t lo = SIZE_MAX, hi = 0;
    for (const duet_request_t *r = comm->active_head; r != NULL; r = r->next)
      if (r->uses_comm_scratch && r->scratch_gen == comm->scratch_gen) {
        lo = r->scratch_off < lo ? r->scratch_off : lo;
        hi = r->scratch_off + r->scratch_len > hi ? r->scratch_off + r->scratch_len : hi;
      }
    if (need > lo)
      off = (hi + 63) & ~(size_t)63;
    if (off > comm->scratch_size || comm->scratch_size - off < need)
      return DUET_SUCCESS;
  }
  req->uses_comm_scratch = 1;
  req->scratch_off = off;
  req->scratch_len = need;
  req->scratch_gen = comm->scratch_gen;
  comm->scratch_users++;
  return DUET_SUCCESS;
}

duet_status_t duet__request_post(duet_comm_t *comm, int coll, const duet__coll_args_t *args,
                                 duet__coll_build_fn build, const void *sendbuf, void *recvbuf,
                                 duet_request_t **out) {
  duet__sched_key_t key;
  duet__sched_t fresh;
  duet_request_t *req;
  duet_status_t rc;
  int slot;
  uint32_t n;

  memset(&key, 0, sizeof(key));
  key.coll = coll;
  key.root = args->root;
  key.peer = args->peer;
  key.in_place = args->in_place;
  key.out_alias = args->out_aliases_in;
  key.build = build;
  key.count = args->count;
  key.chunk = args->chunk_bytes;
  key.dt = args->dt;
  key.op = args->op;
  /* alltoallv's schedule depends on its count arrays: never cached */
  slot = coll == DUET_COLL_ALLTOALLV ? DUET_SCHED_CACHE : duet__cache_find(comm, &key);
  duet__sched_init(&fresh);
  if (slot == DUET_SCHED_CACHE) {
    /* Build into the arrays the last uncached schedule left (see
     * duet__request_free), so that rebuilding every call allocates nothing
     * once they are large enough. */
    if (comm->spare_sched.steps != NULL) {
      fresh = comm->spare_sched;
      duet__sched_init(&comm->spare_sched);
      duet__sched_reset(&fresh);
    }
    rc = build(args, &fresh);
    if (rc == DUET_SUCCESS)
      rc = duet__sched_finalize(&fresh);
    if (rc != DUET_SUCCESS) {
      uint32_t bad = fresh.bad_msg;
      duet__sched_fini(&fresh);
      if (bad)
        return duet__set_error(comm, rc,
                               "%s: the schedule needs message id %u in one phase (at most %u; "
                               "%u per call): %zu elements on %d ranks in %zu-byte chunks; "
                               "raise DUET_CHUNK_BYTES",
                               duet__coll_name(coll), bad - 1, DUET_PHASE_MSGS - 1, DUET_TAG_MSGS,
                               args->count, comm->nranks, args->chunk_bytes);
      return duet__set_error(comm, rc, "%s: building the schedule failed: %s",
                             duet__coll_name(coll), duet_strerror(rc));
    }
    for (uint32_t i = 0; i < fresh.nsteps; i++) {
      duet__step_t *st = &fresh.steps[i];
      if (st->kind == DUET_STEP_SEND || st->kind == DUET_STEP_RECV)
        st->net = comm->peers[st->peer].net;
    }
    if (coll != DUET_COLL_ALLTOALLV) {
      int ins = duet__cache_insert(comm, &key, &fresh);
      slot = ins < 0 ? DUET_SCHED_CACHE : ins;
    }
  }
  n = slot < DUET_SCHED_CACHE ? comm->cache[slot].sched.nsteps : fresh.nsteps;
  req = duet__request_get(comm, n);
  if (req == NULL) {
    duet__sched_fini(&fresh);
    return duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for a request of %u steps",
                           duet__coll_name(coll), n);
  }
  duet__request_reset(req, comm, coll, args->dt, args->op);
  req->cache_slot = slot < DUET_SCHED_CACHE ? slot : -1;
  if (req->cache_slot >= 0) {
    comm->cache[slot].users++;
    comm->cache[slot].last_use = ++comm->cache_clock;
    req->sched = &comm->cache[slot].sched;
  } else {
    req->own_sched = fresh; /* the request owns it */
    req->sched = &req->own_sched;
  }
  if (req->sched->scratch_bytes > 0) {
    size_t need = (size_t)req->sched->scratch_bytes;
    rc = duet__scratch_place(comm, req, need);
    if (rc != DUET_SUCCESS)
      goto out_no_scratch;
    if (req->uses_comm_scratch) {
      req->bufs[DUET_BUF_SCRATCH] = comm->scratch + req->scratch_off;
    } else { /* no room beside the calls in flight */
      size_t got;
      req->own_scratch = duet__shelf_take(&comm->scratch_shelf, need, &got);
      if (req->own_scratch == NULL)
        goto out_no_scratch;
      req->own_scratch_size = got;
      req->bufs[DUET_BUF_SCRATCH] = req->own_scratch;
    }
  } else {
    req->bufs[DUET_BUF_SCRATCH] = NULL;
  }
  req->bufs[DUET_BUF_NONE] = NULL;
  req->bufs[DUET_BUF_SEND] = (uint8_t *)(uintptr_t)sendbuf;
  req->bufs[DUET_BUF_RECV] = recvbuf;
  if (coll == DUET_COLL_SEND)
    req->p2p_seq = comm->peers[args->peer].p2p_send_seq++;
  else if (coll == DUET_COLL_RECV)
    req->p2p_seq = comm->peers[args->peer].p2p_recv_seq++;
  else
    req->seq = args->seq_reserved ? args->seq : comm->seq++;
  memset(req->state, 0, (size_t)n);
  for (uint32_t i = 0; i < n; i++) {
    const duet__step_t *st = &req->sched->steps[i];
    req->left[i] = st->ndeps;
    if (st->ndeps == 0) {
      req->state[i] = 1;
      req->queue[req->nready++] = i;
    }
  }
  req->start_ns = duet__now_ns();
  req->post_order = comm->nets->posts++;
  req->prev = comm->active_tail;
  if (comm->active_tail)
    comm->active_tail->next = req;
  else
    comm->active_head = req;
  comm->active_tail = req;
  DUET_TRACE(DUET_SUB_COLL, "%s seq %u: %u steps, %llu scratch bytes%s", duet__coll_name(coll),
             req->seq, n, (unsigned long long)req->sched->scratch_bytes,
             req->cache_slot >= 0 ? ", cached" : "");
  duet__request_advance(req);
  *out = req;
  return DUET_SUCCESS;

out_no_scratch:
  rc = duet__set_error(comm, DUET_ERR_NO_MEMORY, "%s: out of memory for %llu bytes of scratch",
                       duet__coll_name(coll), (unsigned long long)req->sched->scratch_bytes);
  duet__request_free(req);
  return rc;
}

/* Release a finished request: its schedule back to the cache, its memory to
 * the communicator's pool. One that failed with transfers still posted is
 * kept aside until the endpoints close (the transport may still write it). */
void duet__request_free(duet_request_t *req) {
  duet_comm_t *comm;
  if (req == NULL)
    return;
  comm = req->comm;
  if (comm != NULL && req->cache_slot >= 0) {
    comm->cache[req->cache_slot].users--;
    req->cache_slot = -1;
    req->sched = NULL;
  }
  if (req->nposted > 0 && comm != NULL) {
    if (req->uses_comm_scratch && req->scratch_gen == comm->scratch_gen) {
      /* A receive may still land in the scratch: it goes with the request
       * (with any other call's region in it: the comm has failed). */
      free(req->own_scratch);
      req->own_scratch = comm->scratch;
      req->own_scratch_size = comm->scratch_size;
      comm->scratch = NULL;
      comm->scratch_size = 0;
      comm->scratch_users = 0;
      comm->scratch_gen++;
    }
    req->uses_comm_scratch = 0;
    req->next = comm->nets->zombies;
    comm->nets->zombies = req;
    return;
  }
  if (comm != NULL) {
    duet__scratch_leave(comm, req);
    duet__shelf_put(&comm->scratch_shelf, req->own_scratch, (size_t)req->own_scratch_size);
    req->own_scratch = NULL;
    req->own_scratch_size = 0;
    duet__shelf_put(&comm->counts_shelf, req->mblock, req->mblock_size);
    req->mblock = NULL;
    req->mblock_size = 0;
  }
  if (req->sched == &req->own_sched) {
    /* kept for the next uncached build; not one without steps, which is not
     * reused (duet__request_post) and would be overwritten by the next */
    if (comm != NULL && comm->spare_sched.steps == NULL && req->own_sched.steps != NULL) {
      comm->spare_sched = req->own_sched;
      duet__sched_init(&req->own_sched);
    } else {
      duet__sched_fini(&req->own_sched);
    }
  }
  req->sched = NULL;
  if (comm != NULL) { /* pooled, with room for the largest schedule so far */
    if (req->cap < comm->req_cap)
      (void)duet__request_grow(req, comm->req_cap); /* else when it is next taken */
    req->next = comm->free_reqs;
    comm->free_reqs = req;
    return;
  }
  free(req->own_scratch);
  free(req->left);
  free(req->state);
  free(req->tpreq);
  free(req->queue);
  free(req->posted);
  free(req->mblock);
  free(req);
}

void duet__request_open_gate(duet_request_t *req, uint32_t k) {
  if (k + 1 > req->gates_open)
    req->gates_open = k + 1;
  for (uint32_t n = 0; n < req->nposted; n++) {
    uint32_t i = req->posted[n];
    const duet__step_t *st = &req->sched->steps[i];
    if (st->kind == DUET_STEP_GATE && st->msg <= k)
      req->tpreq[i].done = 1;
  }
}

void duet__request_abandon(duet_request_t *req, duet_status_t status) {
  if (req == NULL)
    return;
  if (!req->complete)
    duet__request_finish(req, status);
  /* gates hold no transport buffer: only real transfers keep it aside */
  for (uint32_t n = 0; n < req->nposted;) {
    if (req->sched->steps[req->posted[n]].kind == DUET_STEP_GATE)
      req->posted[n] = req->posted[--req->nposted];
    else
      n++;
  }
  duet__request_free(req);
}

/* At communicator teardown: the pooled requests and the cached schedules. */
void duet__comm_release_requests(duet_comm_t *comm) {
  while (comm->free_reqs != NULL) {
    duet_request_t *r = comm->free_reqs;
    comm->free_reqs = r->next;
    r->comm = NULL;
    r->nposted = 0;
    duet__request_free(r);
  }
  for (int i = 0; i < DUET_SCHED_CACHE; i++)
    if (comm->cache[i].valid) {
      duet__sched_fini(&comm->cache[i].sched);
      comm->cache[i].valid = 0;
    }
  duet__sched_fini(&comm->spare_sched);
}

/* Fail every pending request (timeout, network failure, abort); the comm
 * stays failed. */
void duet__comm_fail_pending(duet_comm_t *comm, duet_status_t status) {
  if (comm->failed == DUET_SUCCESS)
    comm->failed = status;
  while (comm->active_head != NULL)
    duet__request_finish(comm->active_head, status);
  duet__mem_fail_all(comm, status);
}

/* After the endpoints are closed: nothing can write into requests anymore. */
void duet__request_release_all(duet__netset_t *nets) {
  while (nets->zombies != NULL) {
    duet_request_t *z = nets->zombies;
    nets->zombies = z->next;
    z->nposted = 0;
    z->comm = NULL;
    z->uses_comm_scratch = 0;
    if (z->sched == &z->own_sched)
      duet__sched_fini(&z->own_sched);
    z->sched = NULL;
    duet__request_free(z);
  }
}

/* The step of req that a wait for it waits for: a receive if any is
 * posted, else a send; NULL when none is (or req runs on the segment). */
static const duet__step_t *duet__awaited_step(const duet_request_t *req) {
  const duet_comm_t *comm = req->comm;
  const duet__step_t *st = NULL;
  if (req->mem) /* a task: the schedule it posted, if it waits for one */
    return comm->mem_head == req && comm->mem_awaiting != NULL
               ? duet__awaited_step(comm->mem_awaiting)
               : NULL;
  for (uint32_t k = 0; k < req->nposted; k++) {
    const duet__step_t *c = &req->sched->steps[req->posted[k]];
    if (c->kind == DUET_STEP_GATE) /* the caller's staging: not what it waits for */
      continue;
    if (st == NULL || (c->kind == DUET_STEP_RECV && st->kind != DUET_STEP_RECV))
      st = c;
  }
  return st;
}

void duet__abort_rx_make(duet_comm_t *comm) {
  const int n = comm->nranks;
  duet__abort_rx_t *a;
  int any = 0;
  for (int r = 0; r < n && !any; r++)
    any = duet__peer_needs_notice(comm, r);
  if (!any || comm->abort_rx != NULL)
    return;
  /* one block: the header, the requests, the buffers, the flags */
  a = calloc(1, sizeof(*a) + (size_t)n * (sizeof(duet__tp_req_t) + sizeof(uint64_t) + 1));
  if (a == NULL)
    return; /* tried again at the first long wait */
  a->n = n;
  a->req = (duet__tp_req_t *)(void *)(a + 1);
  a->sink = (uint64_t *)(void *)(a->req + n);
  a->posted = (uint8_t *)(a->sink + n);
  comm->abort_rx = a;
}

/* Whether peer's duet_comm_abort notice has come (comm.c): its receive is
 * posted at the first look, so a notice sent earlier is taken then. */
static int duet__abort_noticed(duet_comm_t *comm, int peer) {
  duet__abort_rx_t *a = comm->abort_rx;
  if (a == NULL) { /* made at init; only an allocation that failed there comes here */
    duet__abort_rx_make(comm);
    if ((a = comm->abort_rx) == NULL)
      return 0;
  }
  if (!a->posted[peer]) {
    const duet__net_t *nt = &comm->nets->net[comm->peers[peer].net];
    char err[DUET_TP_ERRLEN];
    if (nt->ops->irecv(nt->ep, comm->peers[peer].index, &a->sink[peer], sizeof(uint64_t),
                       duet__tag_abort(comm->id), &a->req[peer], err) == DUET_SUCCESS)
      a->posted[peer] = 1;
    return 0;
  }
  return __atomic_load_n(&a->req[peer].done, __ATOMIC_ACQUIRE) &&
         a->req[peer].status == DUET_SUCCESS;
}

/* DESIGN section 7: a transport such as libfabric's says nothing when a
 * peer dies or aborts, so without this a wait for it would last until the
 * deadline. A peer that aborted said so (duet__abort_noticed); a peer on
 * this host that init could see (peers[].start) is looked up in /proc. A
 * transport that sees a peer leave only on a connection, and connects
 * lazily (duet's tcp), is asked to watch it: then the pair's requests fail
 * when it leaves, wherever it runs. */
int duet__awaited_gone(duet_request_t *req, uint64_t now) {
  duet_comm_t *comm = req->comm;
  const duet__step_t *st;
  const duet__peer_t *pe;
  const char *how = "exited or was killed";
  char who[64];
  uint64_t seen;
  if (now < comm->alive_next_ns)
    return 0;
  comm->alive_next_ns = now + DUET_ALIVE_PERIOD_NS;
  st = duet__awaited_step(req);
  if (st == NULL || st->peer < 0 || st->peer >= comm->nranks)
    return 0;
  pe = &comm->peers[st->peer];
  if (st->peer != comm->rank && comm->nets->net[pe->net].ops->watch != NULL) {
    const duet__net_t *nt = &comm->nets->net[pe->net];
    nt->ops->watch(nt->ep, pe->index);
  }
  if (duet__peer_needs_notice(comm, st->peer) && duet__abort_noticed(comm, st->peer)) {
    how = "aborted (duet_comm_abort)";
  } else {
    if (pe->start == 0)
      return 0;
    seen = duet__proc_start(pe->pid);
    if (seen == pe->start || seen == DUET_PROC_UNKNOWN)
      return 0;
  }
  if (pe->start != 0)
    snprintf(who, sizeof(who), "rank %d (pid %d, this host)", st->peer, (int)pe->pid);
  else
    snprintf(who, sizeof(who), "rank %d", st->peer);
  duet__set_error(comm, DUET_ERR_REMOTE,
                  "%s seq %u on rank %d: %s %s while this rank waited for a %s %s it (msg %u, "
                  "%llu bytes, %s) for %llu ms",
                  duet__coll_name(req->coll), req->seq, comm->rank, who, how,
                  st->kind == DUET_STEP_SEND ? "send" : "receive",
                  st->kind == DUET_STEP_SEND ? "to" : "from", st->msg, (unsigned long long)st->len,
                  duet__net_name(st->net), (unsigned long long)((now - req->start_ns) / 1000000ull));
  DUET_WARN(DUET_SUB_COLL, "%s", comm->last_error);
  duet__comm_fail_pending(comm, DUET_ERR_REMOTE);
  return 1;
}

static void duet__timeout_message(duet_request_t *req, uint64_t waited_ms) {
  duet_comm_t *comm = req->comm;
  const duet__step_t *st = NULL;
  if (req->mem && comm->mem_head == req && comm->mem_awaiting != NULL) {
    /* the task waits for a schedule it posted: say what that waits for */
    duet__timeout_message(comm->mem_awaiting, waited_ms);
    return;
  }
  if (req->mem) {
    int peer = comm->mem_head == req && comm->mem != NULL ? duet__shm_awaited(comm->mem) : -1;
    char who[64] = "the other local ranks";
    if (peer >= 0)
      snprintf(who, sizeof(who), "local rank %d", peer);
    else if (comm->mem_head != req)
      snprintf(who, sizeof(who), "the calls posted before it");
    duet__set_error(comm, DUET_ERR_TIMEOUT,
                    "%s on rank %d: timed out after %llu ms waiting for %s (shared-memory UPN, "
                    "non-blocking)",
                    duet__coll_name(req->coll), comm->rank, (unsigned long long)waited_ms, who);
    DUET_WARN(DUET_SUB_COLL, "%s", comm->last_error);
    return;
  }
  st = duet__awaited_step(req);
  if (st != NULL) {
    duet__set_error(comm, DUET_ERR_TIMEOUT,
                    "%s seq %u on rank %d: timed out after %llu ms waiting for a %s %s rank %d "
                    "(msg %u, %llu bytes, %s); %u of %u steps done",
                    duet__coll_name(req->coll), req->seq, comm->rank, (unsigned long long)waited_ms,
                    st->kind == DUET_STEP_SEND ? "send" : "receive",
                    st->kind == DUET_STEP_SEND ? "to" : "from", st->peer, st->msg,
                    (unsigned long long)st->len, duet__net_name(st->net), req->ndone,
                    req->sched->nsteps);
  } else
    duet__set_error(comm, DUET_ERR_TIMEOUT,
                    "%s seq %u on rank %d: timed out after %llu ms; %u of %u steps done",
                    duet__coll_name(req->coll), req->seq, comm->rank, (unsigned long long)waited_ms,
                    req->ndone, req->sched->nsteps);
  DUET_WARN(DUET_SUB_COLL, "%s", comm->last_error);
}

/* Oversubscribed, no load/store segment: look, at most every
 * DUET_PLACE_PERIOD_NS, where the host's ranks run (/proc), and move this
 * rank if it is the one that should (topo/place.c). After a move, wait
 * DUET_PLACE_HOLD_NS. */
#define DUET_PLACE_PERIOD_NS 5000000ull
#define DUET_PLACE_HOLD_NS (4 * DUET_PLACE_PERIOD_NS)
void duet__comm_place(duet_comm_t *comm) {
  int where[64], to;
  uint64_t now = duet__now_ns();

  if (comm->place_pid == NULL || comm->place_n > 64 || now < comm->place_next_ns)
    return;
  comm->place_next_ns = now + DUET_PLACE_PERIOD_NS;
  for (int i = 0; i < comm->place_n; i++)
    where[i] = i == comm->place_me ? sched_getcpu() : duet__place_proc_cpu(comm->place_pid[i]);
  to = duet__place_pick(where, comm->place_n, comm->place_me, &comm->place_mask,
                        now / DUET_PLACE_PERIOD_NS);
  if (to < 0 || duet__place_move(to, &comm->place_mask, comm->place_n) != 0)
    return;
  comm->place_next_ns = now + DUET_PLACE_HOLD_NS;
  DUET_INFO(DUET_SUB_COLL, "rank %d: moved from cpu %d to cpu %d", comm->rank,
            where[comm->place_me], to);
}

/* Block until req completes or the deadline passes. Does not free req. */
duet_status_t duet__request_wait(duet_request_t *req) {
  duet_comm_t *comm = req->comm;
  const uint64_t limit_ns = (uint64_t)comm->cfg.timeout_ms * 1000000ull;
  unsigned spins = 0, idle = 0;

  if (comm->place_pid != NULL)
    duet__comm_place(comm);
  /* Only load/store calls are pending: run them up to req with the engine's
   * own waits (spin, yield when oversubscribed, deadline), as the blocking
   * calls do, until done or one posts a schedule (the hierarchical
   * allreduce's rail phase), which needs the loop below. Not once req is
   * past its deadline (duet_test then comes here to fail it at once). */
  if (req->mem && duet__now_ns() - req->start_ns <= limit_ns)
    while (!req->complete && comm->mem_head != NULL && comm->active_head == NULL)
      duet__mem_progress(comm, 1);
  while (!req->complete) {
    int moved;
    duet_status_t rc = duet__progress_once(comm, &moved);
    if (rc < 0 || req->complete)
      break;
    idle = moved ? 0 : idle + 1;
    /* check the deadline every 256 polls, and before every sleep */
    if ((++spins & 255) == 0 || (comm->yield && idle >= DUET_IDLE_POLLS)) {
      uint64_t now = duet__now_ns(), waited = now - req->start_ns;
      if (waited > limit_ns) {
        duet__timeout_message(req, waited / 1000000ull);
        duet__comm_fail_pending(comm, DUET_ERR_TIMEOUT);
        break;
      }
      if (waited >= DUET_ALIVE_PERIOD_NS && duet__awaited_gone(req, now))
        break;
      if (comm->yield && idle >= DUET_IDLE_POLLS && duet__family_mem_pending(comm)) {
        sched_yield(); /* a local rank, not a network, will wake the queued call */
        continue;
      }
      if (comm->yield && idle >= DUET_IDLE_POLLS) {
        uint64_t left_ms = (limit_ns - waited) / 1000000ull + 1;
        duet__idle_sleep(comm, left_ms < DUET_IDLE_SLEEP_MS ? (int)left_ms : DUET_IDLE_SLEEP_MS);
        continue;
      }
    }
    if (!moved && comm->yield)
      sched_yield();
  }
  return req->status;
}
