#pragma once
// What the job needs from an executor: run one stage's script and stream its output, stop it on
// request, and clean up. The job (runner/job.cpp) decides which stages run and in what order;
// executors never talk to GitLab.

#include <boost/asio/awaitable.hpp>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::executors {

struct stage_request {
    std::string name;    // "get_sources", "step_script", "after_script", …
    std::string script;  // from script_builder
    std::vector<std::pair<std::string, std::string>> env;  // the job's variables, in order
    std::filesystem::path working_directory;
    std::filesystem::path scratch_directory;  // private to the job (mode 0700), for scripts
    /// Deliver standard error as its own stream (timestamped logs mark its lines). Otherwise an
    /// executor may merge it into standard output, which keeps the order of interleaved writes.
    bool separate_stderr = false;
};

struct stage_result {
    int exit_code = 0;           // 128 + signal when killed by a signal
    int signal = 0;
    bool out_of_memory = false;  // the kernel killed it for memory (Docker executor)
    std::string system_error;    // the stage could not run at all; exit_code is meaningless
};

enum class output_stream : std::uint8_t { stdout_stream, stderr_stream };

/// Receives a stage's output as it is written: sink(stream, bytes), or sink(bytes) for standard
/// output. Built from a callable taking (output_stream, std::string_view), or one taking only the
/// bytes (then every stream's output goes to it alike).
class output_sink {
public:
    using function = std::function<void(output_stream, std::string_view)>;

    output_sink() = default;
    template <class F>
        requires(std::is_invocable_v<F&, output_stream, std::string_view> &&
                 !std::is_same_v<std::remove_cvref_t<F>, output_sink>)
    output_sink(F f) : f_(std::move(f)) {}
    template <class F>
        requires(std::is_invocable_v<F&, std::string_view> &&
                 !std::is_invocable_v<F&, output_stream, std::string_view>)
    output_sink(F f)
        : f_([f = std::move(f)](output_stream, std::string_view bytes) mutable { f(bytes); }) {}

    void operator()(std::string_view bytes) const { f_(output_stream::stdout_stream, bytes); }
    void operator()(output_stream stream, std::string_view bytes) const { f_(stream, bytes); }

    /// A receiver that keeps the bytes (the job's trace) may offer where the next read of a
    /// stream goes, so that a reader can put them there and nothing copies them again:
    /// space(stream, max) is that place, or empty (read elsewhere and call the sink), and
    /// placed(stream, n) takes the n bytes read to its start. The read happens right after
    /// space(), with nothing given to the sink in between. Readers that cannot (framed streams)
    /// just call the sink.
    struct placement {
        std::function<std::span<char>(output_stream, std::size_t)> space;
        std::function<void(output_stream, std::size_t)> placed;
    };
    output_sink& place_with(placement p) {
        placement_ = std::move(p);
        return *this;
    }
    std::span<char> space(output_stream stream, std::size_t max) const {
        return placement_.space ? placement_.space(stream, max) : std::span<char>{};
    }
    void placed(output_stream stream, std::size_t n) const { placement_.placed(stream, n); }

private:
    function f_;
    placement placement_;
};

class executor {
public:
    virtual ~executor() = default;

    /// Runs one stage to completion, delivering output as it is written. Completes when the
    /// stage has ended and its output is drained.
    virtual boost::asio::awaitable<stage_result> run_stage(stage_request request,
                                                           output_sink sink) = 0;

    /// Sends `sig` to everything the running stage started (no-op between stages).
    virtual void signal_stage(int sig) = 0;

    /// Removes what the executor created for the job. Runs after cancel and failure too.
    virtual boost::asio::awaitable<void> cleanup() = 0;
};

}  // namespace kiln::executors
