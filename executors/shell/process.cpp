#include "executors/shell/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <span>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cerrno>
#include <system_error>

namespace kiln::executors {
namespace {

namespace asio = boost::asio;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr std::size_t read_size = 64 * 1024;
// Reads into the place the sink offers (a fast job's trace spool block) may be larger: fewer
// reads, masker calls and checksum calls per megabyte, and no buffer of the reader's own.
constexpr std::size_t placed_read_size = 256 * 1024;
// Output of a job that writes in bulk (reads of at least bulk_read) is read in large pieces: the
// next read waits until about half the 1 MiB pipe should be full at the rate seen, at most
// max_pause. Waking for every 4 KiB a job writes cost more CPU than the rest of the job log's
// way to GitLab (bench/trace_path_bench; a sleep and wake-up costs ~15 us of CPU on a virtual
// machine). Lines written now and then are read at once; the pause delays nothing a user sees,
// as the log goes out every few seconds anyway.
constexpr std::size_t bulk_read = 4 * 1024;
constexpr double fill_target = 512 * 1024;
constexpr auto max_pause = std::chrono::milliseconds(10);
constexpr auto min_pause = std::chrono::microseconds(200);

struct fd_closer {
    int fd = -1;
    ~fd_closer() {
        if (fd >= 0) {
            ::close(fd);
        }
    }
};

}  // namespace

struct child_process::impl {
    pid_t pid = -1;
    bool reaped = false;
    asio::posix::stream_descriptor output;
    asio::posix::stream_descriptor errors;  // open only with separate_stderr
    asio::posix::stream_descriptor exit_fd;

    explicit impl(asio::any_io_executor ex) : output(ex), errors(ex), exit_fd(ex) {}
};

namespace {

// A larger pipe lets a chatty job write more between kiln's reads (fewer wake-ups). 1 MiB is the
// default /proc/sys/fs/pipe-max-size; where that is lower, the pipe keeps its size.
void enlarge_pipe(int fd) { ::fcntl(fd, F_SETPIPE_SZ, 1024 * 1024); }

}  // namespace

child_process::child_process(asio::any_io_executor ex, const process_spec& spec)
    : impl_(std::make_unique<impl>(ex)) {
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
        throw std::system_error(errno, std::generic_category(), "cannot create a pipe");
    }
    fd_closer read_end{pipe_fds[0]};
    fd_closer write_end{pipe_fds[1]};
    fd_closer err_read_end;
    fd_closer err_write_end;
    if (spec.separate_stderr) {
        if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
            throw std::system_error(errno, std::generic_category(), "cannot create a pipe");
        }
        err_read_end.fd = pipe_fds[0];
        err_write_end.fd = pipe_fds[1];
    }

    posix_spawn_file_actions_t actions;
    ::posix_spawn_file_actions_init(&actions);
    ::posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    ::posix_spawn_file_actions_adddup2(&actions, write_end.fd, 1);
    ::posix_spawn_file_actions_adddup2(&actions,
                                       spec.separate_stderr ? err_write_end.fd : write_end.fd, 2);
    if (!spec.cwd.empty()) {
        ::posix_spawn_file_actions_addchdir_np(&actions, spec.cwd.c_str());
    }
    posix_spawnattr_t attr;
    ::posix_spawnattr_init(&attr);
    // Own process group, so cancel and timeout reach everything the script started; default
    // signal dispositions and an empty mask, whatever the daemon had.
    sigset_t none;
    sigset_t all;
    ::sigemptyset(&none);
    ::sigfillset(&all);
    ::posix_spawnattr_setpgroup(&attr, 0);
    ::posix_spawnattr_setsigmask(&attr, &none);
    ::posix_spawnattr_setsigdefault(&attr, &all);
    ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                          POSIX_SPAWN_SETSIGDEF);

    std::vector<char*> argv;
    for (const auto& a : spec.argv) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (const auto& e : spec.env) {
        envp.push_back(const_cast<char*>(e.c_str()));
    }
    envp.push_back(nullptr);

    pid_t pid = -1;
    int rc = ::posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
    ::posix_spawn_file_actions_destroy(&actions);
    ::posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        throw std::system_error(rc, std::generic_category(), "cannot start " + spec.argv.at(0));
    }
    impl_->pid = pid;
    // glibc 2.36 declares pidfd_open without C linkage in C++, so call the system call directly.
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) {
        int err = errno;
        ::kill(-pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        impl_->reaped = true;
        throw std::system_error(err, std::generic_category(), "pidfd_open");
    }
    impl_->exit_fd.assign(pidfd);
    enlarge_pipe(read_end.fd);
    impl_->output.assign(read_end.fd);
    read_end.fd = -1;
    if (spec.separate_stderr) {
        enlarge_pipe(err_read_end.fd);
        impl_->errors.assign(err_read_end.fd);
        err_read_end.fd = -1;
    }
}

child_process::~child_process() {
    if (impl_ && impl_->pid > 0 && !impl_->reaped) {
        ::kill(-impl_->pid, SIGKILL);
        ::waitpid(impl_->pid, nullptr, 0);
    }
}

pid_t child_process::pid() const { return impl_->pid; }

void child_process::signal_group(int sig) {
    if (impl_->pid > 0) {
        // The group outlives its leader while children run, so signal it even after reaping.
        ::kill(-impl_->pid, sig);
    }
}

asio::awaitable<exit_status> child_process::run(output_sink sink) {
    using namespace asio::experimental::awaitable_operators;
    auto& s = *impl_;
    exit_status status;

    auto read_all = [&](asio::posix::stream_descriptor& pipe,
                        output_stream stream) -> asio::awaitable<void> {
        // Read with read(2) after waiting for the pipe, not with async_read_some: the bytes go
        // where the sink offers (the trace's spool block) and that place must not change while
        // a read is pending. Only a sink without one gets this buffer.
        std::unique_ptr<char[]> own;
        asio::steady_timer pause(pipe.get_executor());
        // Bytes read since the pipe was last found drained, and when that was.
        auto since = std::chrono::steady_clock::now();
        std::size_t window = 0;
        ::fcntl(pipe.native_handle(), F_SETFL, ::fcntl(pipe.native_handle(), F_GETFL) | O_NONBLOCK);
        for (;;) {
            std::span<char> to = sink.space(stream, placed_read_size);
            const bool placed = !to.empty();
            if (!placed) {
                if (!own) {
                    own = std::make_unique_for_overwrite<char[]>(read_size);
                }
                to = {own.get(), read_size};
            }
            const ssize_t r = ::read(pipe.native_handle(), to.data(), to.size());
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                auto [ec] = co_await pipe.async_wait(asio::posix::descriptor_base::wait_read, use_tuple);
                if (ec) {
                    co_return;
                }
                continue;
            }
            if (r <= 0) {
                co_return;  // EOF: every writer is gone
            }
            const auto n = static_cast<std::size_t>(r);
            if (placed) {
                sink.placed(stream, n);
            } else {
                sink(stream, std::string_view(to.data(), n));
            }
            window += n;
            if (n == to.size()) {
                continue;  // more is waiting: read on at once
            }
            const auto now = std::chrono::steady_clock::now();
            if (window >= bulk_read) {
                const double per_second =
                    static_cast<double>(window) / std::chrono::duration<double>(now - since).count();
                const auto wait = std::min<std::chrono::steady_clock::duration>(
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(fill_target / per_second)),
                    max_pause);
                if (wait >= min_pause) {
                    // Out of the reactor while pausing: the descriptor is registered
                    // edge-triggered, so every write of the job would wake the I/O thread
                    // anyway (~4 KiB each for a stdio writer) and the pause would save nothing.
                    const int fd = pipe.release();
                    pause.expires_after(wait);
                    co_await pause.async_wait(use_tuple);
                    pipe.assign(fd);
                }
            }
            since = now;
            window = 0;
        }
    };
    auto wait_exit = [&]() -> asio::awaitable<void> {
        co_await s.exit_fd.async_wait(asio::posix::descriptor_base::wait_read, use_tuple);
        int ws = 0;
        if (::waitpid(s.pid, &ws, 0) == s.pid) {
            s.reaped = true;
            if (WIFEXITED(ws)) {
                status.exit_code = WEXITSTATUS(ws);
            } else if (WIFSIGNALED(ws)) {
                status.signal = WTERMSIG(ws);
                status.exit_code = 128 + status.signal;
            }
        }
        // Background processes the script left would keep the pipe open for ever.
        ::kill(-s.pid, SIGKILL);
    };
    if (s.errors.is_open()) {
        co_await (read_all(s.output, output_stream::stdout_stream) &&
                  read_all(s.errors, output_stream::stderr_stream) && wait_exit());
    } else {
        co_await (read_all(s.output, output_stream::stdout_stream) && wait_exit());
    }
    co_return status;
}

}  // namespace kiln::executors
