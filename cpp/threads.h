// A persistent worker pool: a decode step runs ~200 matmuls, and spawning threads for each would cost more than
// the matmuls on small models. The caller works too; run() returns when every task is done. With `spin`, workers
// spin that many pauses on the generation counter before sleeping, and the caller on the pending count before
// waiting: an engine's matmuls follow each other within microseconds, and a futex wake per matmul cost 13% of a
// BitNet token on an Ice Lake VM (BENCHMARKS.md, I2_S). ggml's threadpool polls for the same reason. Pools whose
// calls sit between another library's (the heads, between llama.cpp decodes) leave it at 0: a spinning worker
// would take a core from that library's threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace medusa {

// Pauses an engine worker spins between matmuls before sleeping (about a millisecond on x86).
constexpr int ENGINE_SPIN = 20000;

class ThreadPool {
public:
    explicit ThreadPool(int n_threads, int spin = 0) : spin_(spin) {
        for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { loop(); });
    }
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> l(m_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : workers_) t.join();
    }
    int size() const { return (int)workers_.size() + 1; }

    // fn(task) for task in [0, n_tasks), spread over the pool.
    void run(int n_tasks, const std::function<void(int)>& fn) {
        if (workers_.empty() || n_tasks <= 1) {
            for (int i = 0; i < n_tasks; ++i) fn(i);
            return;
        }
        {
            std::lock_guard<std::mutex> l(m_);
            fn_ = &fn;
            n_tasks_ = n_tasks;
            next_ = 0;
            pending_ = (int)workers_.size();
            gen_.fetch_add(1, std::memory_order_release);
        }
        cv_.notify_all();
        work();
        for (int i = 0; i < spin_ && pending_.load(std::memory_order_acquire) != 0; ++i) pause();
        std::unique_lock<std::mutex> l(m_);
        done_cv_.wait(l, [this] { return pending_.load() == 0; });
        fn_ = nullptr;
    }

private:
    void work() {
        for (int i; (i = next_.fetch_add(1)) < n_tasks_;) (*fn_)(i);
    }
    static void pause() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    void loop() {
        uint64_t seen = 0;
        for (;;) {
            for (int i = 0; i < spin_ && gen_.load(std::memory_order_acquire) == seen && !stop_.load(); ++i)
                pause();
            {
                std::unique_lock<std::mutex> l(m_);
                cv_.wait(l, [&] { return stop_ || gen_.load() != seen; });
                if (stop_) return;
                seen = gen_.load();
            }
            work();
            std::lock_guard<std::mutex> l(m_);
            if (pending_.fetch_sub(1) == 1) done_cv_.notify_one();
        }
    }
    const int spin_;
    std::vector<std::thread> workers_;
    std::mutex m_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(int)>* fn_ = nullptr;
    int n_tasks_ = 0;
    std::atomic<int> pending_{0}, next_{0};
    std::atomic<uint64_t> gen_{0};
    std::atomic<bool> stop_{false};
};

}  // namespace medusa
