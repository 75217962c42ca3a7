/*
 * gloo_perf.cc - the duet_perf benchmark, run on Gloo (libgloo-dev), so that
 * duet can be compared with the collective library PyTorch uses on CPUs.
 *
 *   mpirun -np 4 perf/gloo_perf -b 8 -e 64M -f 4 -o allreduce
 *   mpirun -np 4 perf/gloo_perf -b 8 -e 64M -f 4 -o alltoall -s /tmp/store
 *
 * mpirun (or any launcher) only starts the processes: rank and size come from
 * the environment (OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE or
 * RANK/WORLD_SIZE) and the ranks meet through a gloo::rendezvous::FileStore
 * in a directory shared by the ranks (-s DIR, $GLOO_PERF_STORE, or
 * /tmp/gloo_perf.<job id> from the launcher's job id). MPI is not linked.
 * The transport is Gloo's TCP device bound to 127.0.0.1 (one host, loopback).
 *
 * Flags and columns are duet_perf's: size count type redop, then time (us),
 * algbw (GB/s), busbw (GB/s) and #wrong out of place, then in place. Time is
 * the average per iteration of the timed loop, averaged over the ranks (with
 * a Gloo allreduce); algbw = size / time; busbw = algbw * 2(n-1)/n for
 * allreduce and algbw * (n-1)/n for alltoall. float32 sum only. #wrong counts,
 * over all ranks, the elements of one more call on known inputs that differ
 * from the closed-form expected result (the inputs of duet_perf).
 * Gloo's alltoall has no in-place form: its in-place columns read N/A.
 *
 * Build: g++ -O2 -std=c++17 perf/gloo_perf.cc -lgloo -o perf/gloo_perf
 */
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/config.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>

#include <dirent.h>
#include <getopt.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {

enum Coll { ALLREDUCE, ALLTOALL };

struct Opts {
  size_t minbytes = 8, maxbytes = 32u << 20, stepbytes = 1u << 20;
  double stepfactor = 2.0;
  int iters = 20, warmup = 5, check = 1;
  Coll coll = ALLREDUCE;
  std::string store;  // FileStore directory; empty: derived from the job id
  std::string algo = "default";
};

struct Bench {
  int rank = 0, nranks = 1;
  std::shared_ptr<gloo::Context> ctx;
  const Opts *o = nullptr;
  std::vector<float> send, recv;
  double bw_sum = 0;
  long bw_count = 0, wrong_total = 0;
};

const double kMs = 1000.0;

int env_int(const char *const names[], int dflt) {
  for (int i = 0; names[i]; i++) {
    const char *v = getenv(names[i]);
    if (v && *v)
      return atoi(v);
  }
  return dflt;
}

int parse_bytes(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end), mul = 1;
  if (end == s || v < 0)
    return -1;
  switch (*end) {
  case 'K':
  case 'k':
    mul = 1024.0, end++;
    break;
  case 'M':
  case 'm':
    mul = 1024.0 * 1024, end++;
    break;
  case 'G':
  case 'g':
    mul = 1024.0 * 1024 * 1024, end++;
    break;
  default:
    break;
  }
  if (*end == 'B' || *end == 'b')
    end++;
  if (*end)
    return -1;
  *out = (size_t)(v * mul);
  return 0;
}

void usage(const char *prog) {
  fprintf(stderr,
          "usage: %s [options]   (launch with mpirun -np N; no MPI is linked)\n"
          "  -C <coll>    collective: allreduce alltoall (default allreduce)\n"
          "  -b <bytes>   minimum size, K/M/G suffixes (default 8)\n"
          "  -e <bytes>   maximum size (default 32M)\n"
          "  -f <factor>  multiply the size by this each step (default 2)\n"
          "  -i <bytes>   add this to the size each step instead (when -f is 1)\n"
          "  -n <iters>   timed iterations per size (default 20)\n"
          "  -w <iters>   warmup iterations (default 5)\n"
          "  -c <0|1>     check results (default 1)\n"
          "  -d <type>    float32 only (Gloo's benchmark of duet_perf's default)\n"
          "  -o <op>      sum, or a collective name (-o allreduce, -o alltoall) as -C\n"
          "  -a <algo>    allreduce algorithm: default ring bcube (default: Gloo's choice)\n"
          "  -s <dir>     FileStore directory shared by the ranks (default $GLOO_PERF_STORE,\n"
          "               else /tmp/gloo_perf.<launcher job id>, removed at the end)\n"
          "  -h           this help\n"
          "Rank and size: OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE or RANK/WORLD_SIZE.\n"
          "Transport: Gloo TCP on 127.0.0.1. Time is averaged over ranks; busbw = algbw *\n"
          "2(n-1)/n (allreduce) or (n-1)/n (alltoall, size = bytes each rank sends, rounded\n"
          "down to a multiple of n elements). alltoall has no in-place form (N/A columns).\n",
          prog);
}

const char *parse_opts(int argc, char **argv, Opts *o) {
  static const struct option longopts[] = {{"help", no_argument, nullptr, 'h'},
                                           {nullptr, 0, nullptr, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "C:b:e:f:i:n:w:c:d:o:a:s:h", longopts, nullptr)) != -1) {
    switch (opt) {
    case 'C':
    case 'o':
      if (strcmp(optarg, "allreduce") == 0)
        o->coll = ALLREDUCE;
      else if (strcmp(optarg, "alltoall") == 0)
        o->coll = ALLTOALL;
      else if (opt == 'o' && strcmp(optarg, "sum") == 0)
        ;
      else
        return opt == 'C' ? "unknown collective (-C): allreduce or alltoall"
                          : "only -o sum (or a collective name) is supported";
      break;
    case 'b':
      if (parse_bytes(optarg, &o->minbytes))
        return "bad -b size";
      break;
    case 'e':
      if (parse_bytes(optarg, &o->maxbytes))
        return "bad -e size";
      break;
    case 'i':
      if (parse_bytes(optarg, &o->stepbytes) || o->stepbytes == 0)
        return "bad -i size";
      o->stepfactor = 1;
      break;
    case 'f':
      o->stepfactor = atof(optarg);
      if (o->stepfactor < 1)
        return "-f must be >= 1";
      break;
    case 'n':
      if ((o->iters = atoi(optarg)) < 1)
        return "-n must be >= 1";
      break;
    case 'w':
      if ((o->warmup = atoi(optarg)) < 0)
        return "-w must be >= 0";
      break;
    case 'c':
      o->check = atoi(optarg) != 0;
      break;
    case 'd':
      if (strcmp(optarg, "float32") && strcmp(optarg, "float") && strcmp(optarg, "fp32"))
        return "only -d float32 is supported";
      break;
    case 'a':
      if (strcmp(optarg, "default") && strcmp(optarg, "ring") && strcmp(optarg, "bcube"))
        return "unknown allreduce algorithm (-a): default ring bcube";
      o->algo = optarg;
      break;
    case 's':
      o->store = optarg;
      break;
    case 'h':
      return "";
    default:
      return "unknown option";
    }
  }
  if (o->minbytes > o->maxbytes)
    return "-b is larger than -e";
  return nullptr;
}

double bus_factor(Coll c, int n) {
  if (n <= 1)
    return 0;
  return c == ALLREDUCE ? 2.0 * (n - 1) / n : (double)(n - 1) / n;
}

/* Inputs of duet_perf for float32 sum: every partial sum is an exact integer. */
double ar_input(int r, size_t i, int n) {
  if (3.0 * n * (n + 1) / 2 <= 16777216.0)
    return (double)(r + 1) * (double)(i % 3 + 1);
  return r < 16777216 ? (double)((r + i) % 2) : 0;
}
double ar_expected(size_t i, int n) {
  double acc = 0;
  for (int r = 0; r < n; r++)
    acc += ar_input(r, i, n);
  return (double)(float)acc;
}
/* alltoall: element i of the block src sends to dst is (7 src + 3 dst + i) mod 251 */
float a2a_value(int src, int dst, size_t i) {
  return (float)(((uint64_t)src * 7 + (uint64_t)dst * 3 + i) % 251);
}

void fill(Bench &b, float *buf, size_t count) {
  if (b.o->coll == ALLREDUCE) {
    for (size_t i = 0; i < count; i++)
      buf[i] = (float)ar_input(b.rank, i, b.nranks);
  } else {
    size_t blk = count / (size_t)b.nranks;
    for (int k = 0; k < b.nranks; k++)
      for (size_t i = 0; i < blk; i++)
        buf[(size_t)k * blk + i] = a2a_value(b.rank, k, i);
  }
}

long count_wrong(Bench &b, const float *buf, size_t count) {
  long wrong = 0;
  if (b.o->coll == ALLREDUCE) {
    float want[3];
    for (int p = 0; p < 3; p++)
      want[p] = (float)ar_expected((size_t)p, b.nranks);
    bool periodic = 3.0 * b.nranks * (b.nranks + 1) / 2 <= 16777216.0;
    for (size_t i = 0; i < count; i++) {
      float w = periodic ? want[i % 3] : (float)ar_expected(i, b.nranks);
      wrong += memcmp(&buf[i], &w, sizeof w) != 0;
    }
  } else {
    size_t blk = count / (size_t)b.nranks;
    for (int k = 0; k < b.nranks; k++)
      for (size_t i = 0; i < blk; i++) {
        float w = a2a_value(k, b.rank, i);
        wrong += memcmp(&buf[(size_t)k * blk + i], &w, sizeof w) != 0;
      }
  }
  return wrong;
}

void run(Bench &b, size_t count, bool in_place) {
  if (b.o->coll == ALLREDUCE) {
    gloo::AllreduceOptions opts(b.ctx);
    if (!in_place)
      opts.setInput(b.send.data(), count);
    opts.setOutput(b.recv.data(), count); /* the output is also the input in place */
    opts.setReduceFunction(static_cast<void (*)(void *, const void *, const void *, size_t)>(
        &gloo::sum<float>));
    if (b.o->algo == "ring")
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
    else if (b.o->algo == "bcube")
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::BCUBE);
    opts.setTag(1);
    gloo::allreduce(opts);
  } else {
    gloo::AlltoallOptions opts(b.ctx);
    opts.setInput(b.send.data(), count);
    opts.setOutput(b.recv.data(), count);
    opts.setTag(2);
    gloo::alltoall(opts);
  }
}

void barrier(Bench &b) {
  gloo::BarrierOptions opts(b.ctx);
  opts.setTag(3);
  gloo::barrier(opts);
}

/* Sum of v[0..len) over the ranks, in place, with Gloo. */
void allreduce_doubles(Bench &b, double *v, size_t len) {
  gloo::AllreduceOptions opts(b.ctx);
  opts.setOutput(v, len);
  opts.setReduceFunction(static_cast<void (*)(void *, const void *, const void *, size_t)>(
      &gloo::sum<double>));
  opts.setTag(4);
  gloo::allreduce(opts);
}

/* Rank-averaged seconds per iteration; *wrong: job-wide wrong elements or -1. */
double time_one(Bench &b, size_t count, bool in_place, long *wrong) {
  float *src = in_place ? b.recv.data() : b.send.data();
  fill(b, src, count);
  for (int i = 0; i < b.o->warmup; i++)
    run(b, count, in_place);
  barrier(b);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < b.o->iters; i++)
    run(b, count, in_place);
  double sec =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / b.o->iters;
  double mine = 0;
  if (b.o->check) {
    fill(b, src, count);
    if (!in_place)
      memset(b.recv.data(), 0, count * sizeof(float));
    run(b, count, in_place);
    mine = (double)count_wrong(b, b.recv.data(), count);
  }
  double red[2] = {sec, mine};
  allreduce_doubles(b, red, 2);
  *wrong = b.o->check ? (long)red[1] : -1;
  return red[0] / b.nranks;
}

void sweep(Bench &b) {
  const Opts *o = b.o;
  size_t last_count = 0;
  for (size_t size = o->minbytes; size <= o->maxbytes;) {
    size_t count = size / sizeof(float) ? size / sizeof(float) : 1;
    if (o->coll == ALLTOALL) { /* whole blocks, at least one element each */
      count -= count % (size_t)b.nranks;
      if (count < (size_t)b.nranks)
        count = (size_t)b.nranks;
    }
    size_t bytes = count * sizeof(float);
    if (count != last_count) {
      long wrong[2] = {-1, -1};
      double sec[2] = {0, 0};
      int nplace = o->coll == ALLREDUCE ? 2 : 1;
      for (int ip = 0; ip < nplace; ip++)
        sec[ip] = time_one(b, count, ip == 1, &wrong[ip]);
      if (b.rank == 0) {
        printf("%12zu  %12zu  %10s  %6s", bytes, count, "float32",
               o->coll == ALLREDUCE ? "sum" : "none");
        for (int ip = 0; ip < 2; ip++) {
          if (ip >= nplace) {
            printf("  %9s  %7s  %7s  %6s", "N/A", "N/A", "N/A", "N/A");
            continue;
          }
          double algbw = (double)bytes / sec[ip] / 1e9;
          double busbw = algbw * bus_factor(o->coll, b.nranks);
          char nwrong[24] = "N/A";
          if (wrong[ip] >= 0)
            snprintf(nwrong, sizeof nwrong, "%ld", wrong[ip]);
          printf("  %9.2f  %7.2f  %7.2f  %6s", sec[ip] * 1e6, algbw, busbw, nwrong);
          b.bw_sum += busbw;
          b.bw_count++;
        }
        printf("\n");
        fflush(stdout);
      }
      for (int ip = 0; ip < nplace; ip++)
        if (wrong[ip] > 0)
          b.wrong_total += wrong[ip];
      last_count = count;
    }
    size_t next = o->stepfactor > 1 ? (size_t)((double)size * o->stepfactor) : size + o->stepbytes;
    if (next <= size)
      break;
    size = next;
  }
}

/* The launcher's job id, the same in every rank of one mpirun. */
std::string job_id() {
  const char *names[] = {"PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid",
                         "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", nullptr};
  for (int i = 0; names[i]; i++) {
    const char *v = getenv(names[i]);
    if (v && *v) {
      std::string s = v;
      for (char &c : s)
        if (c == '/' || c == ' ')
          c = '_';
      return s;
    }
  }
  return "";
}

void remove_dir(const std::string &dir) {
  if (DIR *d = opendir(dir.c_str())) {
    while (struct dirent *e = readdir(d))
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
        unlink((dir + "/" + e->d_name).c_str());
    closedir(d);
  }
  rmdir(dir.c_str());
}

} // namespace

int main(int argc, char **argv) {
  Opts o;
  Bench b;
  const char *rank_env[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "RANK", nullptr};
  const char *size_env[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "WORLD_SIZE", nullptr};
  b.rank = env_int(rank_env, 0);
  b.nranks = env_int(size_env, 1);
  const char *err = parse_opts(argc, argv, &o);
  if (err) {
    if (b.rank == 0) {
      if (*err)
        fprintf(stderr, "gloo_perf: %s\n", err);
      usage(argv[0]);
    }
    return *err ? 2 : 0;
  }
  if (b.nranks < 1 || b.rank < 0 || b.rank >= b.nranks) {
    fprintf(stderr, "gloo_perf: bad rank %d / size %d from the environment\n", b.rank, b.nranks);
    return 2;
  }
  b.o = &o;

  bool own_store = false;
  if (o.store.empty() && getenv("GLOO_PERF_STORE") && *getenv("GLOO_PERF_STORE"))
    o.store = getenv("GLOO_PERF_STORE");
  if (o.store.empty()) {
    std::string id = job_id();
    if (id.empty() && b.nranks > 1) {
      fprintf(stderr, "gloo_perf: no launcher job id in the environment: give -s DIR\n");
      return 2;
    }
    o.store = "/tmp/gloo_perf." + (id.empty() ? std::to_string(getpid()) : id);
    own_store = true;
  }
  if (mkdir(o.store.c_str(), 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "gloo_perf: mkdir %s: %s\n", o.store.c_str(), strerror(errno));
    return 2;
  }

  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = "127.0.0.1"; /* loopback only */
    attr.ai_family = AF_INET;
    auto dev = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::FileStore fstore(o.store);
    gloo::rendezvous::PrefixStore store("gloo_perf", fstore);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(b.rank, b.nranks);
    ctx->setTimeout(std::chrono::milliseconds((long)(600 * kMs)));
    ctx->connectFullMesh(store, dev);
    b.ctx = ctx;

    size_t maxcount = o.maxbytes / sizeof(float) ? o.maxbytes / sizeof(float) : 1;
    if (maxcount < (size_t)b.nranks)
      maxcount = (size_t)b.nranks;
    b.send.assign(maxcount + 2, 0.0f); /* touched now */
    b.recv.assign(maxcount + 2, 0.0f);

    if (b.rank == 0) {
      char host[256] = "";
      gethostname(host, sizeof host - 1);
      printf("# gloo_perf: %s, %d ranks, gloo %d.%d.%d, tcp on 127.0.0.1%s%s\n",
             o.coll == ALLREDUCE ? "allreduce" : "alltoall", b.nranks, GLOO_VERSION_MAJOR,
             GLOO_VERSION_MINOR, GLOO_VERSION_PATCH,
             o.coll == ALLREDUCE ? ", allreduce algorithm " : "",
             o.coll == ALLREDUCE ? o.algo.c_str() : "");
      printf("#  minBytes %zu maxBytes %zu step: ", o.minbytes, o.maxbytes);
      if (o.stepfactor > 1)
        printf("%g(factor)", o.stepfactor);
      else
        printf("%zu(bytes)", o.stepbytes);
      printf(" warmup iters: %d iters: %d validation: %d\n", o.warmup, o.iters, o.check);
      printf("#  store %s, host %s\n#\n", o.store.c_str(), host);
      printf("# %10s  %12s  %10s  %6s", "", "", "", "");
      for (int ip = 0; ip < 2; ip++)
        printf("  %*s%-*s", 12, "", 23, ip ? "  in-place" : "out-of-place");
      printf("\n# %10s  %12s  %10s  %6s", "size", "count", "type", "redop");
      for (int ip = 0; ip < 2; ip++)
        printf("  %9s  %7s  %7s  %6s", "time", "algbw", "busbw", "#wrong");
      printf("\n# %10s  %12s  %10s  %6s", "(B)", "(elements)", "", "");
      for (int ip = 0; ip < 2; ip++)
        printf("  %9s  %7s  %7s  %6s", "(us)", "(GB/s)", "(GB/s)", "");
      printf("\n");
      fflush(stdout);
    }

    sweep(b);
    barrier(b); /* every rank is done with the store */
  } catch (const std::exception &e) {
    fprintf(stderr, "[rank %d] gloo_perf: %s\n", b.rank, e.what());
    fflush(stderr);
    _exit(1); /* other ranks time out or see the connection drop */
  }

  if (b.rank == 0) {
    if (own_store)
      remove_dir(o.store);
    printf("# Out of bounds values : %ld %s\n", b.wrong_total, b.wrong_total ? "FAILED" : "OK");
    printf("# Avg bus bandwidth : %g\n", b.bw_count ? b.bw_sum / (double)b.bw_count : 0.0);
    printf("#\n");
  }
  return b.wrong_total ? 1 : 0;
}
