#include "runner/util/memory_trim.hpp"

#include <malloc.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace kiln::util {

std::size_t trim_idle_memory() {
    ::malloc_trim(0);
    std::FILE* f = std::fopen("/proc/self/smaps", "re");
    if (f == nullptr) {
        return 0;
    }
    struct range {
        unsigned long begin, end;
    };
    std::vector<range> ranges;
    char line[512];
    range current{0, 0};
    bool candidate = false;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        unsigned long begin = 0, end = 0, offset = 0, inode = 0;
        char perms[8] = {};
        char dev[16] = {};
        if (std::sscanf(line, "%lx-%lx %7s %lx %15s %lu", &begin, &end, perms, &offset, dev,
                        &inode) == 6) {
            current = {begin, end};
            // File-backed and not writable: its pages are the file's, unless relocation
            // processing made private copies (relro), which the Anonymous line below shows.
            candidate = inode != 0 && perms[1] != 'w';
        } else if (candidate && std::strncmp(line, "Anonymous:", 10) == 0) {
            if (std::strtoul(line + 10, nullptr, 10) == 0) {
                ranges.push_back(current);
            }
            candidate = false;
        }
    }
    std::fclose(f);
    std::size_t released = 0;
    for (const auto& r : ranges) {
        if (::madvise(reinterpret_cast<void*>(r.begin), r.end - r.begin, MADV_DONTNEED) == 0) {
            released += r.end - r.begin;
        }
    }
    return released;
}

}  // namespace kiln::util
