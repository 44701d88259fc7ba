#include "runner/artifacts/path_match.hpp"

#include "runner/util/glob.hpp"

#include <algorithm>
#include <deque>
#include <map>
#include <set>

namespace kiln::artifacts {
namespace {

std::string join(std::string_view dir, std::string_view name) {
    if (dir.empty() || dir == ".") {
        return std::string(name);
    }
    std::string s(dir);
    s += '/';
    s += name;
    return s;
}

bool segment_has_meta(std::string_view seg) {
    for (std::size_t i = 0; i < seg.size(); ++i) {
        if (seg[i] == '\\') {
            ++i;
        } else if (seg[i] == '*' || seg[i] == '?' || seg[i] == '[') {
            return true;
        }
    }
    return false;
}

std::string unescape(std::string_view seg) {
    std::string out;
    for (std::size_t i = 0; i < seg.size(); ++i) {
        if (seg[i] == '\\' && i + 1 < seg.size()) {
            ++i;
        }
        out += seg[i];
    }
    return out;
}

bool is_outside(std::string_view rel) {
    return rel == ".." || rel.substr(0, 3) == "../" || (!rel.empty() && rel[0] == '/');
}

}  // namespace

std::string clean_path(std::string_view path) {
    const bool rooted = !path.empty() && path[0] == '/';
    std::vector<std::string_view> parts;
    std::size_t start = 0;
    while (start <= path.size()) {
        auto end = path.find('/', start);
        if (end == std::string_view::npos) {
            end = path.size();
        }
        auto e = path.substr(start, end - start);
        start = end + 1;
        if (e.empty() || e == ".") {
            continue;
        }
        if (e == "..") {
            if (!parts.empty() && parts.back() != "..") {
                parts.pop_back();
            } else if (!rooted) {
                parts.push_back(e);
            }
            continue;
        }
        parts.push_back(e);
    }
    std::string out = rooted ? "/" : "";
    for (std::size_t i = 0; i < parts.size(); ++i) {
        if (i > 0) {
            out += '/';
        }
        out += parts[i];
    }
    if (out.empty()) {
        out = ".";
    }
    return out;
}

std::pair<std::string, std::string> split_pattern(std::string_view p) {
    std::size_t split = std::string_view::npos;
    for (std::size_t i = 0; i < p.size(); ++i) {
        char c = p[i];
        if (c == '\\') {
            ++i;
        } else if (c == '/') {
            split = i;
        } else if (c == '*' || c == '?' || c == '[' || c == '{') {
            break;
        }
    }
    if (split == 0) {
        return {"/", std::string(p.substr(1))};
    }
    if (split != std::string_view::npos) {
        return {std::string(p.substr(0, split)), std::string(p.substr(split + 1))};
    }
    return {".", std::string(p)};
}

relative_path relative_in_project(std::string_view project_dir, std::string_view path) {
    relative_path r;
    const std::string root = clean_path(project_dir);
    if (clean_path(path) == root) {
        r.ok = true;
        r.path = ".";
        return r;
    }
    std::string base(path);
    std::string pattern;
    if (has_glob_meta(path)) {
        std::tie(base, pattern) = split_pattern(path);
    }
    const std::string abs =
        !base.empty() && base[0] == '/' ? clean_path(base) : clean_path(root + "/" + base);
    std::string rel;
    if (abs == root) {
        rel = ".";
    } else if (root == "/" || abs.compare(0, root.size() + 1, root + "/") == 0) {
        rel = abs.substr(root == "/" ? 1 : root.size() + 1);
    } else {
        r.error = "artifact path is not a subpath of project directory: " + std::string(path);
        return r;
    }
    if (!pattern.empty()) {
        rel = clean_path(rel + "/" + pattern);
        if (is_outside(rel)) {
            r.error = "artifact path is not a subpath of project directory: " + std::string(path);
            return r;
        }
    }
    r.ok = true;
    r.path = rel;
    return r;
}

resolved_path resolve_inside(const fs_view& fs, std::string_view project_dir,
                             std::string_view path, bool follow_last) {
    const std::string root = clean_path(project_dir);
    std::deque<std::string> todo;
    for (auto& e : util::split_path(clean_path(path))) {
        todo.push_back(std::move(e));
    }
    std::vector<std::string> done;
    int links = 0;
    auto joined = [&done] {
        std::string s;
        for (const auto& d : done) {
            s = join(s, d);
        }
        return s.empty() ? std::string(".") : s;
    };
    while (!todo.empty()) {
        std::string e = std::move(todo.front());
        todo.pop_front();
        if (e.empty() || e == ".") {
            continue;
        }
        if (e == "..") {
            if (done.empty()) {
                return {};
            }
            done.pop_back();
            continue;
        }
        done.push_back(e);
        if (!todo.empty() || follow_last) {
            const auto candidate = joined();
            if (fs.lstat(candidate) == node_kind::symlink) {
                if (++links > 40) {
                    return {};
                }
                done.pop_back();
                std::string target = fs.read_link(candidate);
                if (target.empty()) {
                    return {};
                }
                if (target[0] == '/') {
                    target = clean_path(target);
                    if (target == root) {
                        target = ".";
                    } else if (target.compare(0, root.size() + 1, root + "/") == 0) {
                        target = target.substr(root.size() + 1);
                    } else {
                        return {};
                    }
                    done.clear();
                }
                auto parts = util::split_path(target);
                todo.insert(todo.begin(), parts.begin(), parts.end());
            }
        }
    }
    return {true, joined()};
}

namespace {

class selector {
public:
    selector(std::string_view project_dir, const selection_spec& spec, const fs_view& fs)
        : root_(clean_path(project_dir)), spec_(spec), fs_(fs) {
        for (const auto& pattern : spec.exclude) {
            auto r = relative_in_project(root_, pattern);
            if (!r.ok) {
                warn("exclude: " + r.error);
                continue;
            }
            excludes_.emplace_back(pattern, r.path);
        }
    }

    selection run() {
        for (const auto& p : spec_.paths) {
            process_path(p);
        }
        if (spec_.untracked) {
            process_untracked();
        }
        for (const auto& [rule, count] : excluded_) {
            info(rule + ": excluded " + std::to_string(count) + " files");
        }
        for (const auto& [path, kind] : files_) {
            out_.entries.push_back({path, kind});
        }
        return std::move(out_);
    }

private:
    void warn(std::string text) { out_.messages.push_back({true, std::move(text)}); }
    void info(std::string text) { out_.messages.push_back({false, std::move(text)}); }

    const std::string* excluded_by(const std::string& path) const {
        for (const auto& [original, rel] : excludes_) {
            if (glob_match(rel, path)) {
                return &original;
            }
        }
        return nullptr;
    }

    bool process(const std::string& path) {
        if (path == "." || path.empty()) {
            return false;  // the project directory itself is not an archive entry
        }
        if (const auto* rule = excluded_by(path)) {
            auto it = std::find_if(excluded_.begin(), excluded_.end(),
                                   [&](const auto& e) { return e.first == *rule; });
            if (it == excluded_.end()) {
                excluded_.emplace_back(*rule, 1);
            } else {
                ++it->second;
            }
            return false;
        }
        const auto kind = fs_.lstat(path);
        if (kind == node_kind::missing) {
            return false;
        }
        if (kind == node_kind::symlink && !resolve_inside(fs_, root_, path, true).inside) {
            warn(path + ": symbolic link leads outside the project directory; not archived");
            return false;
        }
        files_[path] = kind;
        return true;
    }

    std::vector<std::string> sorted_children(const std::string& dir) const {
        auto names = fs_.list(dir);
        std::sort(names.begin(), names.end());
        return names;
    }

    // filepath.Walk: the path itself, then (for a real directory, never a symlink) its
    // subtree in lexical order.
    void walk(const std::string& path, int& found) {
        if (process(path)) {
            ++found;
        }
        if (fs_.lstat(path) != node_kind::directory) {
            return;
        }
        for (const auto& name : sorted_children(path)) {
            walk(join(path, name), found);
        }
    }

    void glob(const std::string& dir, const std::vector<std::string>& segs, std::size_t i,
              std::set<std::string>& out, std::set<std::pair<std::string, std::size_t>>& seen) {
        if (!seen.emplace(dir, i).second) {
            return;
        }
        if (i == segs.size()) {
            out.insert(dir);
            return;
        }
        const auto& seg = segs[i];
        const bool last = i + 1 == segs.size();
        if (seg == "**") {
            glob(dir, segs, i + 1, out, seen);
            for (const auto& name : sorted_children(dir)) {
                auto p = join(dir, name);
                if (fs_.lstat(p) == node_kind::directory) {
                    glob(p, segs, i, out, seen);
                }
            }
            return;
        }
        if (!segment_has_meta(seg)) {
            auto p = join(dir, unescape(seg));
            auto kind = fs_.lstat(p);
            if (kind == node_kind::missing) {
                return;
            }
            if (last) {
                out.insert(p);
                return;
            }
            if (kind == node_kind::symlink) {
                // A named directory may be a link, as long as it stays inside.
                auto r = resolve_inside(fs_, root_, p, true);
                if (!r.inside) {
                    warn(p + ": symbolic link leads outside the project directory; not followed");
                    return;
                }
                kind = fs_.lstat(r.path);
            }
            if (kind == node_kind::directory) {
                glob(p, segs, i + 1, out, seen);
            }
            return;
        }
        for (const auto& name : sorted_children(dir)) {
            if (util::match_glob_element(seg, name) != util::element_match::yes) {
                continue;
            }
            auto p = join(dir, name);
            if (last) {
                out.insert(p);
            } else if (fs_.lstat(p) == node_kind::directory) {
                glob(p, segs, i + 1, out, seen);
            }
        }
    }

    void process_path(const std::string& path) {
        if (path.empty()) {
            warn("No matching files. Path is empty.");
            return;
        }
        auto r = relative_in_project(root_, path);
        if (!r.ok) {
            warn(r.error);
            return;
        }
        std::set<std::string> matches;
        for (const auto& alt : expand_braces(r.path)) {
            std::set<std::pair<std::string, std::size_t>> seen;
            auto segs = util::split_path(clean_path(alt));
            if (segs.size() == 1 && segs[0] == ".") {
                matches.insert(".");
                continue;
            }
            glob(".", segs, 0, matches, seen);
        }
        int found = 0;
        for (const auto& m : matches) {
            walk(m, found);
        }
        if (found == 0) {
            warn(path + ": no matching files. Ensure that the artifact path is relative to the "
                        "working directory (" + root_ + ")");
        } else {
            info(path + ": found " + std::to_string(found) +
                 " matching artifact files and directories");
        }
    }

    void process_untracked() {
        int found = 0;
        for (const auto& file : spec_.untracked_files) {
            auto p = clean_path(file);
            if (is_outside(p)) {
                warn(file + ": not supported: outside build directory");
                continue;
            }
            if (!resolve_inside(fs_, root_, p, false).inside) {
                warn(file + ": symbolic link leads outside the project directory; not archived");
                continue;
            }
            if (process(p)) {
                ++found;
            }
        }
        if (found == 0) {
            warn("untracked: no files");
        } else {
            info("untracked: found " + std::to_string(found) + " files");
        }
    }

    std::string root_;
    const selection_spec& spec_;
    const fs_view& fs_;
    std::vector<std::pair<std::string, std::string>> excludes_;  // as written, relative
    std::vector<std::pair<std::string, std::int64_t>> excluded_;
    std::map<std::string, node_kind> files_;
    selection out_;
};

}  // namespace

selection select_files(std::string_view project_dir, const selection_spec& spec,
                       const fs_view& fs) {
    return selector(project_dir, spec, fs).run();
}

}  // namespace kiln::artifacts
