#pragma once

namespace kiln {

/// "0.1.0"
const char* version_string();
/// Short git revision the binary was built from, or "unknown".
const char* revision_string();

}  // namespace kiln
