/*
 * fiber.h - a second stack on which one task runs until it must wait, then
 * hands control back and is resumed later where it stopped.
 *
 * The load/store path's collectives are written as straight-line blocking
 * code (src/shm/shm.c). Their non-blocking forms run that same code as a task
 * on a fiber: a wait that would spin suspends the task instead, and every
 * later progress call resumes it (core/mem_queue.c). One fiber per
 * communicator is enough, because the calls of one shared segment execute
 * one after another in call order.
 *
 * A fiber belongs to one thread at a time. Its stack is mapped once, with a
 * guard page below it, so an overflow faults instead of corrupting memory.
 * A switch saves and restores a few registers (x86-64; ucontext elsewhere).
 * Builds with AddressSanitizer tell it about every switch.
 */
#ifndef DUET_FIBER_H
#define DUET_FIBER_H

#include <stddef.h>

#include "duet.h"

typedef struct duet__fiber duet__fiber_t;
typedef void (*duet__fiber_fn)(void *arg);

/* Map a fiber with a stack of stack_bytes (rounded up to pages). Returns
 * DUET_ERR_NO_MEMORY or DUET_ERR_SYSTEM on failure, *f = NULL. */
duet_status_t duet__fiber_create(duet__fiber_t **f, size_t stack_bytes);
/* Unmap; a suspended task is dropped without running further. NULL is
 * allowed. */
void duet__fiber_destroy(duet__fiber_t *f);

/* Run fn(arg) on the fiber until it returns or calls duet__fiber_suspend.
 * The fiber must be idle (no task started and unfinished). Returns 1 when
 * fn has returned, 0 when it is suspended. */
int duet__fiber_start(duet__fiber_t *f, duet__fiber_fn fn, void *arg);
/* Continue the suspended task; returns as duet__fiber_start. */
int duet__fiber_resume(duet__fiber_t *f);
/* Called by the task only: return to the caller of start or resume. */
void duet__fiber_suspend(duet__fiber_t *f);
/* Drop a suspended task (it failed elsewhere and will never be resumed);
 * the fiber is idle again. */
void duet__fiber_abandon(duet__fiber_t *f);
/* 1 while a task is started and unfinished. */
int duet__fiber_busy(const duet__fiber_t *f);

#endif /* DUET_FIBER_H */
