#include "magnets/error.h"

namespace magnets {

static std::string compose(const std::string& what, const std::string& path, const std::string& why) {
    std::string s = what;
    if (!path.empty()) s += " (" + path + ")";
    if (!why.empty()) s += ": " + why;
    return s;
}

Error::Error(std::string what, std::string path, std::string why, std::string hint)
    : std::runtime_error(compose(what, path, why)), what_(std::move(what)), path_(std::move(path)),
      why_(std::move(why)), hint_(std::move(hint)) {}

void check(bool cond, const std::string& what, const std::string& why, const std::string& hint) {
    if (!cond) throw Error(what, {}, why, hint);
}

} // namespace magnets
