/*
 * fiber.c - one task on a second stack (see fiber.h).
 *
 * The task context is made once: a trampoline loops running the task it is
 * given and switching back when that returns, so starting the next task is a
 * plain switch. A task that was abandoned mid-way leaves its frames on the
 * stack; the context is then made afresh before the next start.
 *
 * On x86-64 a switch saves the callee-saved registers and the two FP control
 * words on the stack it leaves and restores them from the one it enters
 * (duet__fiber_jump below): ~10 ns. Elsewhere it is ucontext's swapcontext,
 * which also saves the signal mask with a system call (~150 ns). Neither
 * touches the signal mask otherwise: a task never changes it.
 */
#include "core/fiber.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define DUET_FIBER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DUET_FIBER_ASAN 1
#endif
#endif
#ifdef DUET_FIBER_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__)
#define DUET_FIBER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DUET_FIBER_TSAN 1
#endif
#endif
#ifdef DUET_FIBER_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#if defined(__x86_64__) && defined(__ELF__) && !defined(DUET_FIBER_UCONTEXT)
#define DUET_FIBER_JUMP 1
/* Save the callee-saved registers, mxcsr and the x87 control word on the
 * current stack, store its pointer to *from, switch to the stack `to` and
 * restore the same from it; returns on the other side, in the context that
 * last jumped away from `to` (or at a fresh stack's entry). */
void duet__fiber_jump(void **from, void *to);
__asm__(".text\n"
        ".globl duet__fiber_jump\n"
        ".hidden duet__fiber_jump\n"
        ".type duet__fiber_jump, @function\n"
        "duet__fiber_jump:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size duet__fiber_jump, .-duet__fiber_jump\n");
#endif

struct duet__fiber {
#ifdef DUET_FIBER_JUMP
  void *caller_sp, *task_sp; /* where each side's registers were saved */
#else
  ucontext_t caller, task;
#endif
  char *map; /* a guard page, then the stack */
  size_t map_bytes, page;
  duet__fiber_fn fn;
  void *arg;
  int busy;  /* a task started and not finished */
  int fresh; /* the task context must be made before the next start */
  /* AddressSanitizer: the fake stacks, and the caller's stack bounds */
  void *fake_caller, *fake_task;
  const void *caller_bottom;
  size_t caller_size;
  /* ThreadSanitizer: the task's context, and the caller's of the last
   * switch (the task may be resumed by another thread: the progress thread) */
  void *tsan_task, *tsan_caller;
};

/* The fiber a freshly made context starts for (makecontext passes only ints). */
static _Thread_local duet__fiber_t *duet__fiber_entering;

static void duet__fiber_to_task(duet__fiber_t *f) {
#ifdef DUET_FIBER_TSAN
  f->tsan_caller = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(f->tsan_task, 0);
#endif
#ifdef DUET_FIBER_ASAN
  __sanitizer_start_switch_fiber(&f->fake_caller, f->map + f->page, f->map_bytes - f->page);
#endif
#ifdef DUET_FIBER_JUMP
  duet__fiber_jump(&f->caller_sp, f->task_sp);
#else
  swapcontext(&f->caller, &f->task);
#endif
#ifdef DUET_FIBER_ASAN
  __sanitizer_finish_switch_fiber(f->fake_caller, NULL, NULL);
#endif
}

static void duet__fiber_to_caller(duet__fiber_t *f) {
#ifdef DUET_FIBER_TSAN
  __tsan_switch_to_fiber(f->tsan_caller, 0);
#endif
#ifdef DUET_FIBER_ASAN
  __sanitizer_start_switch_fiber(&f->fake_task, f->caller_bottom, f->caller_size);
#endif
#ifdef DUET_FIBER_JUMP
  duet__fiber_jump(&f->task_sp, f->caller_sp);
#else
  swapcontext(&f->task, &f->caller);
#endif
#ifdef DUET_FIBER_ASAN
  __sanitizer_finish_switch_fiber(f->fake_task, &f->caller_bottom, &f->caller_size);
#endif
}

static void duet__fiber_main(void) {
  duet__fiber_t *f = duet__fiber_entering;
#ifdef DUET_FIBER_ASAN
  __sanitizer_finish_switch_fiber(NULL, &f->caller_bottom, &f->caller_size);
#endif
  for (;;) {
    f->fn(f->arg);
    f->busy = 0;
    duet__fiber_to_caller(f);
  }
}

/* Prepare the task context to enter duet__fiber_main on a clean stack. */
static int duet__fiber_make(duet__fiber_t *f) {
#ifdef DUET_FIBER_TSAN
  if (f->tsan_task != NULL) /* an abandoned task's frames go with it */
    __tsan_destroy_fiber(f->tsan_task);
  f->tsan_task = __tsan_create_fiber(0);
#endif
#ifdef DUET_FIBER_JUMP
  /* What duet__fiber_jump pops, from the lowest address: the control words
   * (mxcsr's default, x87's default), six registers, the return address
   * (the entry), and a null return address for the entry's frame, placed so
   * that the entry starts as if called: rsp = 8 mod 16. */
  uintptr_t top = ((uintptr_t)f->map + f->map_bytes) & ~(uintptr_t)15;
  uint64_t *sp = (uint64_t *)(top - 72);
  sp[0] = 0x1f80u | ((uint64_t)0x037fu << 32);
  for (int i = 1; i <= 6; i++)
    sp[i] = 0;
  sp[7] = (uint64_t)(uintptr_t)duet__fiber_main;
  sp[8] = 0;
  f->task_sp = sp;
  return 0;
#else
  if (getcontext(&f->task) != 0)
    return -1;
  f->task.uc_stack.ss_sp = f->map + f->page;
  f->task.uc_stack.ss_size = f->map_bytes - f->page;
  f->task.uc_link = NULL; /* the trampoline never returns */
  makecontext(&f->task, duet__fiber_main, 0);
  return 0;
#endif
}

duet_status_t duet__fiber_create(duet__fiber_t **out, size_t stack_bytes) {
  long page = sysconf(_SC_PAGESIZE);
  duet__fiber_t *f;

  *out = NULL;
  if (page <= 0)
    page = 4096;
  f = calloc(1, sizeof(*f));
  if (f == NULL)
    return DUET_ERR_NO_MEMORY;
  f->page = (size_t)page;
  f->map_bytes = (stack_bytes + f->page - 1) / f->page * f->page + f->page;
  f->map = mmap(NULL, f->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                -1, 0);
  if (f->map == MAP_FAILED) {
    free(f);
    return DUET_ERR_NO_MEMORY;
  }
  if (mprotect(f->map, f->page, PROT_NONE) != 0) { /* the guard page */
    munmap(f->map, f->map_bytes);
    free(f);
    return DUET_ERR_SYSTEM;
  }
  f->fresh = 1;
  *out = f;
  return DUET_SUCCESS;
}

void duet__fiber_destroy(duet__fiber_t *f) {
  if (f == NULL)
    return;
#ifdef DUET_FIBER_TSAN
  if (f->tsan_task != NULL)
    __tsan_destroy_fiber(f->tsan_task);
#endif
  munmap(f->map, f->map_bytes);
  free(f);
}

int duet__fiber_start(duet__fiber_t *f, duet__fiber_fn fn, void *arg) {
  if (f->busy)
    return -1;
  if (f->fresh) {
    if (duet__fiber_make(f) != 0)
      return -1;
    f->fresh = 0;
    duet__fiber_entering = f;
  }
  f->fn = fn;
  f->arg = arg;
  f->busy = 1;
  duet__fiber_to_task(f);
  return !f->busy;
}

int duet__fiber_resume(duet__fiber_t *f) {
  if (!f->busy)
    return 1;
  duet__fiber_to_task(f);
  return !f->busy;
}

void duet__fiber_suspend(duet__fiber_t *f) {
  duet__fiber_to_caller(f);
}

void duet__fiber_abandon(duet__fiber_t *f) {
  if (f->busy) {
    f->busy = 0;
    f->fresh = 1;
  }
}

int duet__fiber_busy(const duet__fiber_t *f) {
  return f != NULL && f->busy;
}
