#pragma once

#include <cstddef>

namespace kiln::util {

/// Gives back memory an idle daemon does not need: free heap pages go back to the kernel
/// (malloc_trim), and the page-table entries of read-only, file-backed mappings that were
/// touched during start-up (library code run once: OpenSSL initialisation, config parsing) are
/// dropped. Those pages stay in the page cache and come back on the next access, exactly as
/// after the kernel reclaims them under memory pressure; mappings holding private (written)
/// pages are never touched. Returns the bytes of mappings released, for logging.
std::size_t trim_idle_memory();

}  // namespace kiln::util
