// `kiln artifacts verify`: checks a signed artifact archive outside a job (docs/artifacts.md).

#include <cstdio>
#include <string>
#include <vector>

#include "runner/artifacts/signing.hpp"
#include "runner/commands/commands.hpp"
#include "runner/commands/common.hpp"

namespace kiln::commands {

namespace {

std::string human_size(std::uint64_t bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double value = static_cast<double>(bytes);
    int unit = 0;
    while (value >= 1024 && unit < 4) {
        value /= 1024;
        ++unit;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
    return buf;
}

}  // namespace

int run_artifacts_verify(const artifacts_verify_options& o) {
    std::vector<artifacts::key> keys;
    for (const auto& file : o.key_files) {
        auto k = artifacts::load_verify_key(file);
        if (!k.value) {
            print_error(k.error);
            return 1;
        }
        keys.push_back(*k.value);
    }
    if (keys.empty()) {
        print_error("give the public key to check against with --key PUB.pem");
        return 1;
    }
    auto r = artifacts::verify_archive(o.archive, keys);
    if (!r.ok) {
        print_error(o.archive + ": " + r.error);
        return 1;
    }
    const auto& m = *r.signed_manifest;
    std::printf("OK: %s: %llu file(s), %s, signed by key %s (%s)\n", o.archive.c_str(),
                static_cast<unsigned long long>(r.files), human_size(r.bytes).c_str(),
                r.key_id.c_str(), m.algorithm.c_str());
    std::printf("  job %lld%s%s, project %s, commit %s%s%s, runner %s, signed %s%s\n",
                static_cast<long long>(m.facts.job_id), m.facts.job_url.empty() ? "" : " ",
                m.facts.job_url.c_str(), m.facts.project.empty() ? "?" : m.facts.project.c_str(),
                m.facts.commit_sha.empty() ? "?" : m.facts.commit_sha.c_str(),
                m.facts.ref.empty() ? "" : " on ", m.facts.ref.c_str(),
                m.facts.runner.empty() ? "?" : m.facts.runner.c_str(), m.facts.created.c_str(),
                r.has_provenance ? ", with provenance" : "");
    return 0;
}

}  // namespace kiln::commands
