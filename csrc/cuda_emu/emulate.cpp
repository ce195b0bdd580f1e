// Fiber scheduler of the CUDA emulation (csrc/cuda_emu/emulate.h).
#include "emulate.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

// Context switch between fibers. On x86-64 a few instructions save the callee-saved
// registers and swap stacks (the kernels never change the FP control registers); elsewhere
// ucontext, whose swapcontext also saves the signal mask (a system call per switch).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(CLIPTBP_EMU_UCONTEXT)
#define CLIPTBP_EMU_ASM_SWITCH 1
extern "C" void cliptbp_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .p2align 4
  .globl cliptbp_emu_switch
  .hidden cliptbp_emu_switch
  .type cliptbp_emu_switch,@function
cliptbp_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cliptbp_emu_switch, .-cliptbp_emu_switch
)");
#else
#include <ucontext.h>
#endif

namespace cliptbp_emu {

dim3 g_thread_idx, g_block_idx, g_block_dim, g_grid_dim;

namespace {

#if defined(CLIPTBP_EMU_ASM_SWITCH)
struct Context {
  void* sp = nullptr;
};
void start_fiber();  // first code a new fiber runs
// A stack whose first switch "returns" into start_fiber with the ABI's alignment.
void init_context(Context& c, char* stack, size_t bytes) {
  uintptr_t top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
  void** slot = reinterpret_cast<void**>(top - 16);
  slot[0] = reinterpret_cast<void*>(&start_fiber);  // popped by `ret`
  slot[1] = nullptr;                                // start_fiber never returns
  for (int r = 1; r <= 6; ++r) slot[-r] = nullptr;  // rbp rbx r12 r13 r14 r15
  c.sp = slot - 6;
}
void switch_to(Context& from, Context& to) { cliptbp_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void start_fiber();
void init_context(Context& c, char* stack, size_t bytes) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, start_fiber, 0);
}
void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

enum State { kReady, kAtBlock, kAtWarp, kDone };

constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned kWarp = 32;

struct Fiber {
  Context ctx;
  std::vector<char> stack;
  State state = kReady;
  dim3 idx;
};

std::mutex g_mutex;  // one emulated launch at a time
Context g_sched;
std::vector<Fiber> g_fibers;
unsigned g_current = 0;
const std::function<void()>* g_body = nullptr;
int g_order = 0;
int g_error = 0;
long long g_switches = 0;

void start_fiber() {
  (*g_body)();
  Fiber& f = g_fibers[g_current];
  f.state = kDone;
  switch_to(f.ctx, g_sched);  // never resumed
  std::abort();
}

void yield_with(State s) {
  Fiber& f = g_fibers[g_current];
  f.state = s;
  switch_to(f.ctx, g_sched);
  // resumed: restore this fiber's indices
  g_thread_idx = g_fibers[g_current].idx;
}

// Run one block to its end. Returns false on a barrier no GPU could complete.
bool run_block(unsigned n) {
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = g_fibers[t];
    init_context(f.ctx, f.stack.data(), f.stack.size());
    f.state = kReady;
  }
  for (;;) {
    for (unsigned s = 0; s < n; ++s) {
      const unsigned t = g_order == 0 ? s : n - 1 - s;
      if (g_fibers[t].state != kReady) continue;
      g_current = t;
      g_thread_idx = g_fibers[t].idx;
      ++g_switches;
      switch_to(g_sched, g_fibers[t].ctx);
    }
    // Every fiber now waits at a barrier or is done.
    unsigned done = 0, at_block = 0;
    for (unsigned t = 0; t < n; ++t) {
      done += g_fibers[t].state == kDone;
      at_block += g_fibers[t].state == kAtBlock;
    }
    if (done == n) return true;
    bool released = false;
    for (unsigned w0 = 0; w0 < n; w0 += kWarp) {
      const unsigned w1 = w0 + kWarp < n ? w0 + kWarp : n;
      unsigned live = 0, waiting = 0;
      for (unsigned t = w0; t < w1; ++t) {
        live += g_fibers[t].state != kDone;
        waiting += g_fibers[t].state == kAtWarp;
      }
      if (live > 0 && waiting == live) {
        for (unsigned t = w0; t < w1; ++t)
          if (g_fibers[t].state == kAtWarp) g_fibers[t].state = kReady;
        released = true;
      }
    }
    if (released) continue;
    if (at_block == n) {
      for (unsigned t = 0; t < n; ++t) g_fibers[t].state = kReady;
      continue;
    }
    std::fprintf(stderr,
                 "cliptbp CUDA emulation: block (%u,%u,%u) cannot proceed: %u of %u threads "
                 "at __syncthreads, %u done, the rest at __syncwarp of a warp not all there\n",
                 g_block_idx.x, g_block_idx.y, g_block_idx.z, at_block, n, done);
    return false;
  }
}

}  // namespace

int run_grid(dim3 grid, dim3 block, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const unsigned n = block.x * block.y * block.z;
  if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535) {
    g_error = cudaErrorInvalidConfiguration;
    return g_error;
  }
  if (g_fibers.size() < n) {
    g_fibers.resize(n);
    for (Fiber& f : g_fibers) f.stack.resize(kStackBytes);
  }
  for (unsigned t = 0; t < n; ++t)
    g_fibers[t].idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
  g_body = &body;
  g_block_dim = block;
  g_grid_dim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_block_idx = dim3(x, y, z);
        if (!run_block(n)) {
          g_error = cudaErrorLaunchFailure;
          return g_error;
        }
      }
  return 0;
}

void sync_block() { yield_with(kAtBlock); }
void sync_warp() { yield_with(kAtWarp); }

int last_error() {
  const int e = g_error;
  g_error = 0;
  return e;
}

}  // namespace cliptbp_emu

extern "C" {
void cliptbp_emu_set_order(int order) { cliptbp_emu::g_order = order != 0; }
long long cliptbp_emu_switches() { return cliptbp_emu::g_switches; }
}

// Error names of runtime.h for the emulation module (the real ones come from the runtime).
extern "C" {
const char* cliptbp_cuda_error_name(int code) {
  switch (code) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "unknown CUDA error";
  }
}
const char* cliptbp_cuda_error_string(int code) {
  switch (code) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid launch configuration (emulation)";
    case cudaErrorLaunchFailure:
      return "a block could not complete its barriers (emulation; details on stderr)";
    default: return "unknown error";
  }
}
}
