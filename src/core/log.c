/*
 * log.c - DUET_DEBUG / DUET_DEBUG_SUBSYS filtered logging to stderr.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"

int duet__log_level = DUET_LOG_WARN;
unsigned duet__log_subsys = DUET_SUB_ALL;
static int duet__log_rank = -1;
static char duet__log_host[64];
static pthread_once_t duet__log_once = PTHREAD_ONCE_INIT;

static const struct {
  const char *name;
  unsigned bit;
} duet__subsys_names[] = {{"INIT", DUET_SUB_INIT}, {"BOOT", DUET_SUB_BOOT},
                          {"TOPO", DUET_SUB_TOPO}, {"COLL", DUET_SUB_COLL},
                          {"TUNE", DUET_SUB_TUNE}, {"NET", DUET_SUB_NET},
                          {"ALL", DUET_SUB_ALL}};

/* Parse DUET_DEBUG_SUBSYS: comma list, optionally prefixed ^ to exclude. */
int duet__log_parse_subsys(const char *text, unsigned *mask) {
  int exclude = 0;
  unsigned m = 0;
  if (text[0] == '^') {
    exclude = 1;
    text++;
  }
  while (*text) {
    size_t n = strcspn(text, ",");
    size_t i;
    for (i = 0; i < sizeof(duet__subsys_names) / sizeof(duet__subsys_names[0]); i++) {
      if (strlen(duet__subsys_names[i].name) == n &&
          strncasecmp(text, duet__subsys_names[i].name, n) == 0)
        break;
    }
    if (i == sizeof(duet__subsys_names) / sizeof(duet__subsys_names[0]))
      return -1;
    m |= duet__subsys_names[i].bit;
    text += n;
    if (*text == ',')
      text++;
  }
  *mask = exclude ? (DUET_SUB_ALL & ~m) : m;
  return 0;
}

int duet__log_parse_level(const char *text, int *level) {
  static const char *names[] = {"NONE", "WARN", "INFO", "TRACE"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(text, names[i]) == 0) {
      *level = i;
      return 0;
    }
  }
  return -1;
}

static void duet__log_do_init(void) {
  const char *lvl = duet__config_env("DUET_DEBUG");
  const char *sub = duet__config_env("DUET_DEBUG_SUBSYS");
  if (gethostname(duet__log_host, sizeof(duet__log_host)) != 0)
    strcpy(duet__log_host, "?");
  duet__log_host[sizeof(duet__log_host) - 1] = '\0';
  /* Bad values are reported by duet__config_resolve at init; here we keep the
   * default so a typo never silences warnings. */
  if (lvl != NULL && duet__log_parse_level(lvl, &duet__log_level) != 0)
    duet__log_level = DUET_LOG_WARN;
  if (sub != NULL && duet__log_parse_subsys(sub, &duet__log_subsys) != 0)
    duet__log_subsys = DUET_SUB_ALL;
}

void duet__log_init(void) { pthread_once(&duet__log_once, duet__log_do_init); }

void duet__log_set_rank(int rank) {
  duet__log_init();
  duet__log_rank = rank;
}

void duet__log(int level, unsigned subsys, const char *fmt, ...) {
  static const char *lvl_names[] = {"", "WARN", "INFO", "TRACE"};
  char line[1024];
  va_list ap;
  int n;

  duet__log_init();
  if (duet__log_level < level || !(duet__log_subsys & subsys))
    return;
  n = snprintf(line, sizeof(line), "%s:%d:%d duet %s ", duet__log_host, (int)getpid(),
               duet__log_rank, lvl_names[level < 4 ? level : 3]);
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof(line))
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}
