// io/atomic.cpp: atomic file replacement (temp file beside the target, then
// rename) and the writability check every output goes through first.
#include "magnets/error.h"
#include "magnets/formats.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include <fcntl.h>
#include <unistd.h>

namespace magnets {
namespace {

namespace fs = std::filesystem;

// Directory holding `path` ("." for a bare file name).
std::string parent_dir(const std::string& path) {
    const fs::path parent = fs::path(path).parent_path();
    return parent.empty() ? std::string(".") : parent.string();
}

// fsync of a file or directory; false on failure (errno set).
bool sync_path(const std::string& path, bool directory) {
    const int fd = ::open(path.c_str(), (directory ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const bool ok = ::fsync(fd) == 0;
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return ok;
}

} // namespace

void check_writable(const std::string& path) {
    check(!path.empty(), "no output path given");
    const std::string dir = parent_dir(path);
    std::error_code ec;
    if (!fs::exists(dir, ec))
        throw Error("cannot write file", path, "directory '" + dir + "' does not exist",
                    "create it first (mkdir -p " + dir + ") or choose another output path");
    if (!fs::is_directory(dir, ec))
        throw Error("cannot write file", path, "'" + dir + "' is not a directory",
                    "choose another output path");
    if (fs::is_directory(path, ec))
        throw Error("cannot write file", path, "it is a directory", "give a file name, not a folder");
    if (::access(dir.c_str(), W_OK | X_OK) != 0)
        throw Error("cannot write file", path,
                    "directory '" + dir + "' is not writable (" + std::strerror(errno) + ")",
                    "choose another output path or fix the directory's permissions");
    // access() says yes to root everywhere, and to pseudo file systems such as
    // /proc: creating (and removing) a probe file is the only reliable test.
    const fs::path p(path);
    const std::string probe =
        (p.parent_path() / ("." + p.filename().string() + ".probe." + std::to_string(::getpid()))).string();
    const int fd = ::open(probe.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST)
        throw Error("cannot write file", path,
                    "cannot create files in '" + dir + "' (" + std::strerror(errno) + ")",
                    "choose another output path");
    if (fd >= 0) {
        ::close(fd);
        ::unlink(probe.c_str());
    }
}

// The temp name is hidden (leading '.') and carries the pid so concurrent
// writers of the same target in different processes do not collide; it lives
// in the target's directory so rename() never crosses file systems.
AtomicOutput::AtomicOutput(std::string path) : path_(std::move(path)) {
    check_writable(path_);
    const fs::path p(path_);
    const fs::path tmp = p.parent_path() / ("." + p.filename().string() + ".tmp." + std::to_string(::getpid()));
    temp_ = tmp.string();
    std::error_code ec;
    fs::remove(temp_, ec); // a stale temp of this pid can only be a leftover
}

AtomicOutput::~AtomicOutput() {
    if (!committed_) {
        std::error_code ec;
        fs::remove(temp_, ec);
    }
}

void AtomicOutput::commit() {
    if (committed_) throw Error("AtomicOutput::commit called twice", path_);
    std::error_code ec;
    if (!fs::exists(temp_, ec))
        throw Error("cannot write file", path_, "the temporary file '" + temp_ + "' was not written");
    if (!sync_path(temp_, false))
        throw Error("cannot write file", path_, std::string("fsync failed: ") + std::strerror(errno),
                    "check free space on the device");
    if (::rename(temp_.c_str(), path_.c_str()) != 0)
        throw Error("cannot write file", path_, std::string("rename failed: ") + std::strerror(errno));
    committed_ = true;
    // The rename is durable only once the directory entry is synced; a failure
    // here does not undo the write, so it is not an error.
    sync_path(parent_dir(path_), true);
}

} // namespace magnets
