#pragma once
// Counting archive work for archive_work() (archive.hpp): the archive functions time themselves.

#include <chrono>
#include <cstdint>

#include "runner/artifacts/archive.hpp"

namespace kiln::artifacts::detail {

void note_archive_work(archive_operation op, std::uint64_t bytes,
                       std::chrono::steady_clock::duration took);

/// Runs `f` and counts the bytes `bytes_of(result)` reports and the time it took; a call that
/// throws counts nothing.
template <class F, class Bytes>
auto counted(archive_operation op, F&& f, Bytes bytes_of) {
    const auto start = std::chrono::steady_clock::now();
    auto r = f();
    note_archive_work(op, bytes_of(r), std::chrono::steady_clock::now() - start);
    return r;
}

}  // namespace kiln::artifacts::detail
