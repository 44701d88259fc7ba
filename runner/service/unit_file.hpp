#pragma once
// The systemd unit `kiln install` writes: packaging/kiln.service (embedded at build time, the
// one source of truth) with the service name, user, config and working directory filled in.

#include <string>
#include <string_view>

namespace kiln::service {

struct unit_options {
    std::string executable;         // absolute path of the kiln binary
    std::string config;             // absolute config path
    std::string working_directory;  // absolute
    std::string user;               // the service's User=; empty: root (no User= line)
    std::string run_as;             // `kiln run --user`: jobs' user, when the service is another
};

/// packaging/kiln.service as compiled into this binary.
std::string_view packaged_unit();

/// `base` with ExecStart=, User=, WorkingDirectory=, StateDirectory= and ReadWritePaths= set
/// from `o`; ProtectHome= is dropped when a path lives under /home or /root.
std::string render_unit(std::string_view base, const unit_options& o);

/// A value for a systemd command line: quoted when it holds spaces or quotes.
std::string systemd_quote(std::string_view arg);

}  // namespace kiln::service
