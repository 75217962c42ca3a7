/*
 * log.h - filtered logging: DUET_DEBUG=WARN|INFO|TRACE selects the level,
 * DUET_DEBUG_SUBSYS=INIT,BOOT,TOPO,COLL,TUNE,NET (or ALL, or ^NET to exclude)
 * the subsystems. Each line carries host, pid and rank. Writes to stderr.
 */
#ifndef DUET_LOG_H
#define DUET_LOG_H

enum { DUET_LOG_NONE = 0, DUET_LOG_WARN = 1, DUET_LOG_INFO = 2, DUET_LOG_TRACE = 3 };

enum {
  DUET_SUB_INIT = 1u << 0,
  DUET_SUB_BOOT = 1u << 1,
  DUET_SUB_TOPO = 1u << 2,
  DUET_SUB_COLL = 1u << 3,
  DUET_SUB_TUNE = 1u << 4,
  DUET_SUB_NET = 1u << 5,
  DUET_SUB_ALL = 0x3fu
};

extern int duet__log_level;       /* current level; read once from the config table */
extern unsigned duet__log_subsys; /* mask of enabled subsystems */

void duet__log_init(void); /* idempotent, thread-safe */
void duet__log_set_rank(int rank);
void duet__log(int level, unsigned subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DUET_LOG_ON(lvl, sub) \
  (duet__log_level >= (lvl) && (duet__log_subsys & (sub)))
#define DUET_WARN(sub, ...) duet__log(DUET_LOG_WARN, (sub), __VA_ARGS__)
#define DUET_INFO(sub, ...) \
  do { if (DUET_LOG_ON(DUET_LOG_INFO, sub)) duet__log(DUET_LOG_INFO, (sub), __VA_ARGS__); } while (0)
#define DUET_TRACE(sub, ...) \
  do { if (DUET_LOG_ON(DUET_LOG_TRACE, sub)) duet__log(DUET_LOG_TRACE, (sub), __VA_ARGS__); } while (0)

#endif /* DUET_LOG_H */
