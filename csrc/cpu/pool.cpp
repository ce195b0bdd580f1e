// Work sharing for the CPU kernels (see pool.h).
//
// One job at a time runs on the helpers; a call that finds them busy (another Python thread
// inside a kernel) runs alone instead of waiting. A job is published under the pool's mutex
// with a new generation number; a helper joins it only while it is still published, and the
// caller unpublishes it before waiting for the helpers that joined, so a helper that wakes
// late finds nothing to do and nobody waits for it.
#include "pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

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
  // Runs `job` on the caller and up to `helpers` helpers. False (nothing run) if another job
  // holds the helpers.
  bool try_run(Job& job, int helpers) {
    std::unique_lock<std::mutex> call(call_, std::try_to_lock);
    if (!call.owns_lock()) return false;
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
        std::unique_lock<std::mutex> lk(m_);
        done_.wait(lk, idle);
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

}  // namespace cpu
}  // namespace cliptbp
