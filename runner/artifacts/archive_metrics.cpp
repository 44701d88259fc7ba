#include "runner/artifacts/archive_metrics.hpp"

#include <atomic>

namespace kiln::artifacts {
namespace {

struct totals {
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> nanoseconds{0};
};

totals& of(archive_operation op) {
    static totals create;
    static totals extract;
    return op == archive_operation::create ? create : extract;
}

}  // namespace

archive_totals archive_work(archive_operation op) {
    const auto& t = of(op);
    return {t.bytes.load(std::memory_order_relaxed),
            static_cast<double>(t.nanoseconds.load(std::memory_order_relaxed)) / 1e9};
}

namespace detail {

void note_archive_work(archive_operation op, std::uint64_t bytes,
                       std::chrono::steady_clock::duration took) {
    auto& t = of(op);
    t.bytes.fetch_add(bytes, std::memory_order_relaxed);
    t.nanoseconds.fetch_add(
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(took).count()),
        std::memory_order_relaxed);
}

}  // namespace detail
}  // namespace kiln::artifacts
