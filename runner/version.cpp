#include "runner/version.hpp"

namespace kiln {

const char* version_string() { return KILN_VERSION; }
const char* revision_string() { return KILN_REVISION; }

}  // namespace kiln
