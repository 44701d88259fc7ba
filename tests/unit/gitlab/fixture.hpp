#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace kiln::test {

/// The text of tests/fixtures/<name>.
inline std::string read_fixture(const std::string& name) {
    std::ifstream in(std::string(KILN_FIXTURES_DIR) + "/" + name, std::ios::binary);
    if (!in) {
        throw std::runtime_error("cannot open fixture " + name);
    }
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

}  // namespace kiln::test
