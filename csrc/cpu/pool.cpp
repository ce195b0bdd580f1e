// Work sharing for the CPU kernels (see pool.h).
//
// One job at a time runs on the helpers; a call that finds them busy (another Python thread
// inside a kernel) runs alone instead of waiting. A job is published under the pool's mutex
// with a new generation number; a helper joins it only while it is still published, and the
// caller unpublishes it before waiting for the helpers that joined, so a helper that wakes
// late finds nothing to do and nobody waits for it.
#include "pool.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <tuple>

namespace cliptbp {
namespace cpu {
namespace {

using Clock = std::chrono::steady_clock;

// How long an idle helper polls for the next job before it sleeps. The kernels run a few jobs
// back to back in one call; a helper that slept between them would need a wake-up each time.
// Short enough that a helper with nothing to do hands its core back quickly.
constexpr std::chrono::microseconds kHelperSpin(50);
// How long the caller polls for the helpers' last chunks before it sleeps.
constexpr std::chrono::microseconds kCallerSpin(20);
// A straggler: the caller, out of chunks, waited for a helper's chunk longer than it worked
// itself in the job and longer than kStraggle. On a busy machine that is a helper the
// scheduler took off its core in the middle of a chunk; the job then costs the caller up to
// a time slice. After one, jobs run on the caller alone for a back-off period, then try the
// helpers again. The period starts at kBackoffMin and doubles (up to kBackoffMax) when the
// next straggler comes within twice the period after the last one ended, so a machine that
// stays busy keeps the kernels on one thread most of the time, and a single late helper on
// a quiet machine costs one short period. Results do not depend on it (the kernels' outputs
// are independent of the thread count).
constexpr std::chrono::microseconds kStraggle(200);
// The other sign of a busy machine, seen before any helper is involved: the calling thread
// itself waits on a run queue (Linux's per-thread schedstat). Measured over at least
// kProbeEvery; when it waited more than kBusyShare of that time, the cores are
// oversubscribed and a helper would only add one more thread to the queue, so jobs run on
// the caller alone for kBusyBackoff before the next look.
constexpr std::chrono::milliseconds kProbeEvery(5);
constexpr double kBusyShare = 0.25;
constexpr std::chrono::milliseconds kBusyBackoff(50);
constexpr std::chrono::milliseconds kBackoffMin(20);
constexpr std::chrono::milliseconds kBackoffMax(640);
constexpr int kMaxHelpers = 255;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Poll `done()` for at most `budget`; true if it became true.
template <typename F>
bool spin_until(F&& done, std::chrono::microseconds budget) {
  const auto until = Clock::now() + budget;
  for (unsigned i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 0 && Clock::now() >= until) return done();
  }
}

// Nanoseconds the calling thread has spent runnable but waiting for a CPU, or -1 where the
// kernel does not say (not Linux, no schedstat).
int64_t run_queue_wait_ns() {
#if defined(__linux__)
  const int fd = ::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[128];
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  // "<ns on a cpu> <ns waiting on a run queue> <time slices>"
  char* end = nullptr;
  std::strtoll(buf, &end, 10);
  if (end == buf) return -1;
  const char* second = end;
  const long long wait = std::strtoll(second, &end, 10);
  return end == second ? -1 : static_cast<int64_t>(wait);
#else
  return -1;
#endif
}

// Per calling thread: the last look at its run-queue wait.
struct Probe {
  Clock::time_point at{};
  int64_t wait_ns = -1;
};
thread_local Probe t_probe;

struct Job {
  int64_t n = 0, grain = 1, chunks = 0;
  const std::function<void(int64_t, int64_t, int)>* fn = nullptr;
  std::atomic<int64_t> next{0};
  int max_helpers = 0;         // helpers allowed to join
  int joined = 0;              // helpers that joined (guarded by Pool::m_)
  std::atomic<int> active{0};  // helpers still running chunks
  std::mutex error_m;
  std::exception_ptr error;

  // Take chunks until none is left. An exception stops the hand-out of further chunks and is
  // kept for the caller.
  void run(int slot) {
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const int64_t begin = c * grain;
      try {
        (*fn)(begin, std::min(n, begin + grain), slot);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_m);
        if (!error) error = std::current_exception();
        next.store(chunks, std::memory_order_relaxed);
        return;
      }
    }
  }
};

class Pool {
 public:
  // Runs `job` on the caller and up to `helpers` helpers. False (nothing run: the caller runs
  // the job alone) if another job holds the helpers or the pool is backing off.
  bool try_run(Job& job, int helpers) {
    std::unique_lock<std::mutex> call(call_, std::try_to_lock);
    if (!call.owns_lock()) return false;
    const auto start = Clock::now();
    const bool backoff = backoff_enabled_.load(std::memory_order_relaxed);
    if (backoff) look_for_a_busy_machine(start);
    if (backoff && start < serial_until_) {  // backing off on a busy machine
      ++serial_jobs_;
      return false;
    }
    grow(helpers);
    job.max_helpers = std::min(helpers, size_.load(std::memory_order_relaxed));
    if (job.max_helpers > 0) {
      bool notify;
      {
        std::lock_guard<std::mutex> g(m_);
        job_ = &job;
        gen_.fetch_add(1, std::memory_order_release);
        notify = sleeping_ > 0;
      }
      if (notify) wake_.notify_all();
    }
    job.run(0);
    if (job.max_helpers > 0) {
      {
        std::lock_guard<std::mutex> g(m_);
        job_ = nullptr;  // no helper joins from here on
      }
      auto idle = [&] { return job.active.load(std::memory_order_acquire) == 0; };
      if (!spin_until(idle, kCallerSpin)) {
        const auto worked = Clock::now() - start;
        const auto wait_from = Clock::now();
        {
          std::unique_lock<std::mutex> lk(m_);
          done_.wait(lk, idle);
        }
        const auto now = Clock::now();
        const auto waited = now - wait_from;
        if (backoff && waited > kStraggle && waited > worked) straggler(now);
      }
    }
    std::lock_guard<std::mutex> g(m_);
    peak_ = std::max(peak_, 1 + job.joined);
    return true;
  }

  int size() const { return size_.load(std::memory_order_relaxed); }

  int peak(bool reset) {
    std::lock_guard<std::mutex> g(m_);
    const int p = peak_;
    if (reset) peak_ = 0;
    return p;
  }

  // Called with call_ held: back off if the calling thread waited on a run queue for more
  // than kBusyShare of the time since its last look (see kBusyShare).
  void look_for_a_busy_machine(Clock::time_point now) {
    Probe& p = t_probe;
    if (p.wait_ns >= 0 && now - p.at < kProbeEvery) return;
    const int64_t wait = run_queue_wait_ns();
    if (wait >= 0 && p.wait_ns >= 0) {
      const double span = std::chrono::duration<double, std::nano>(now - p.at).count();
      if (static_cast<double>(wait - p.wait_ns) > kBusyShare * span) {
        ++busy_looks_;
        serial_until_ = std::max(serial_until_, now + kBusyBackoff);
      }
    }
    p.at = now;
    p.wait_ns = wait;
  }

  // Called with call_ held: back off after a straggler (see kStraggle).
  void straggler(Clock::time_point now) {
    ++stragglers_;
    const bool again = stragglers_ > 1 && now < serial_until_ + 2 * backoff_;
    backoff_ = again ? std::min<std::chrono::nanoseconds>(backoff_ * 2, kBackoffMax)
                     : std::chrono::nanoseconds(kBackoffMin);
    serial_until_ = now + backoff_;
  }

  // Turn the back-off on or off (tests that must run the helpers); returns the old setting.
  bool set_backoff(bool on) { return backoff_enabled_.exchange(on); }

  // Back off for `ms` from now, as after a busy look (tests).
  void back_off_for(int64_t ms) {
    std::lock_guard<std::mutex> g(call_);
    serial_until_ = Clock::now() + std::chrono::milliseconds(ms);
  }

  // (busy looks, stragglers, jobs run alone while backing off) since the start.
  std::tuple<int64_t, int64_t, int64_t> backoff_stats() {
    std::lock_guard<std::mutex> g(call_);
    return {busy_looks_, stragglers_, serial_jobs_};
  }

 private:
  // Start helpers until there are `helpers` (fewer if the system refuses a thread).
  void grow(int helpers) {
    while (size_.load(std::memory_order_relaxed) < helpers) {
      try {
        std::thread t(&Pool::worker, this, gen_.load(std::memory_order_acquire));
        t.detach();
      } catch (...) {
        return;
      }
      size_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void worker(uint64_t seen) {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "cliptbp-cpu");
#endif
    for (;;) {
      spin_until([&] { return gen_.load(std::memory_order_acquire) != seen; }, kHelperSpin);
      std::unique_lock<std::mutex> lk(m_);
      if (gen_.load(std::memory_order_relaxed) == seen) {
        ++sleeping_;
        wake_.wait(lk, [&] { return gen_.load(std::memory_order_relaxed) != seen; });
        --sleeping_;
      }
      seen = gen_.load(std::memory_order_relaxed);
      Job* job = job_;
      if (job == nullptr || job->joined >= job->max_helpers) continue;
      const int slot = ++job->joined;
      job->active.fetch_add(1, std::memory_order_relaxed);
      lk.unlock();
      job->run(slot);
      // The last helper out wakes the caller; after this decrement `job` may be gone.
      if (job->active.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> g(m_);
        done_.notify_all();
      }
    }
  }

  std::mutex call_;  // held by the caller of the running job
  // guarded by call_:
  Clock::time_point serial_until_{};
  std::chrono::nanoseconds backoff_{kBackoffMin};
  int64_t busy_looks_ = 0, stragglers_ = 0, serial_jobs_ = 0;
  std::atomic<bool> backoff_enabled_{true};
  std::mutex m_;     // guards job_, sleeping_ and Job::joined
  std::condition_variable wake_, done_;
  std::atomic<uint64_t> gen_{0};
  Job* job_ = nullptr;
  int sleeping_ = 0;
  int peak_ = 0;  // most threads (caller included) in one job since the last reset
  std::atomic<int> size_{0};
};

// The pool is created on first use and never destroyed (its helpers are detached and live
// as long as the process). A child process made by fork() has none of the parent's helpers:
// it forgets the parent's pool (without touching its locks, which a helper may have held at
// the fork) and starts its own on first use.
std::atomic<Pool*> g_pool{nullptr};

void forget_pool_after_fork() { g_pool.store(nullptr, std::memory_order_relaxed); }

const int g_atfork = pthread_atfork(nullptr, nullptr, forget_pool_after_fork);

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  Pool* fresh = new Pool();
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *p;
}

}  // namespace

void parallel_for(int64_t n, int64_t grain, int max_threads,
                  const std::function<void(int64_t, int64_t, int)>& fn) {
  (void)g_atfork;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n - 1) / grain + 1;
  const int64_t helpers =
      std::min<int64_t>({static_cast<int64_t>(max_threads) - 1, chunks - 1, kMaxHelpers});
  if (helpers >= 1) {
    Job job;
    job.n = n;
    job.grain = grain;
    job.chunks = chunks;
    job.fn = &fn;
    if (pool().try_run(job, static_cast<int>(helpers))) {
      if (job.error) std::rethrow_exception(job.error);
      return;
    }
  }
  for (int64_t c = 0; c < chunks; ++c) fn(c * grain, std::min(n, c * grain + grain), 0);
}

int pool_threads() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  return p == nullptr ? 0 : p->size();
}

int pool_peak(bool reset) {
  Pool* p = g_pool.load(std::memory_order_acquire);
  return p == nullptr ? 0 : p->peak(reset);
}

bool set_pool_backoff(bool on) { return pool().set_backoff(on); }

void pool_back_off_for(int64_t ms) { pool().back_off_for(ms); }

std::tuple<int64_t, int64_t, int64_t> pool_backoff_stats() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  return p == nullptr ? std::tuple<int64_t, int64_t, int64_t>{0, 0, 0} : p->backoff_stats();
}

}  // namespace cpu
}  // namespace cliptbp
