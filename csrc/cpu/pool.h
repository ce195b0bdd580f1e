// Work sharing for the CPU kernels: the calling thread and up to `max_threads - 1` helper
// threads take chunks of an index range from a shared counter.
//
// Why not an OpenMP parallel region: every thread of a region must reach each of its barriers,
// so when the scheduler takes one team member off its core (another process wants the core),
// the whole team waits for it, a time slice or more per barrier. Here nobody waits for a
// helper that has not started: the calling thread takes every chunk that no helper has
// claimed, and at the end waits only for chunks already in progress. Idle helpers spin for a
// bounded time after a job (the kernels run several jobs back to back), then sleep on a
// condition variable. When the machine is oversubscribed (the calling thread itself waits
// for a CPU, or it waits long for a helper that lost its core mid-chunk), the following
// jobs run on the caller alone for a while: a helper would only queue for a core too. The pool is private to this module: it
// changes no OpenMP or torch setting, and its threads exist only while the process uses the
// kernels.
#pragma once

#include <cstdint>
#include <functional>
#include <tuple>

namespace cliptbp {
namespace cpu {

// fn(begin, end, slot) for consecutive chunks [begin, end) of [0, n), each chunk at most
// `grain` indices long, every index exactly once. `slot` in [0, max_threads) names the thread
// running the chunk (0 for the caller); two chunks with the same slot never run at the same
// time, so per-slot scratch needs no lock. At most min(max_threads, number of chunks) threads
// take part; with max_threads <= 1, while another call is using the helpers, or while the
// pool backs off on a busy machine, the caller runs every chunk itself in index order. If fn throws, no further chunks are handed out and
// the first exception is rethrown on the calling thread once every running chunk has ended.
void parallel_for(int64_t n, int64_t grain, int max_threads,
                  const std::function<void(int64_t, int64_t, int)>& fn);

// Helper threads the pool has started so far in this process (for tests).
int pool_threads();
// The most threads (the caller included) that took part in one job of the helpers since the
// last reset; `reset` starts a new count (for tests). Calls that ran alone do not count.
int pool_peak(bool reset);
// (busy looks, stragglers, jobs run on the caller alone while backing off) in this process:
// how often a caller found itself waiting for a CPU or waited long for a helper that had
// lost its core (for tests and benchmarks; see pool.cpp).
std::tuple<int64_t, int64_t, int64_t> pool_backoff_stats();
// Turn the back-off on busy machines on (the default) or off; returns the previous setting.
// Off, every job with work for them uses the helpers (tests of the parallel paths).
bool set_pool_backoff(bool on);
// Start a back-off period of `ms` milliseconds now (tests).
void pool_back_off_for(int64_t ms);

}  // namespace cpu
}  // namespace cliptbp
