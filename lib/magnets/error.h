// magnets/error.h: the one exception type of the library.
//
// Library code never prints or exits; it throws magnets::Error carrying what
// failed, the path involved (if any), why, and a hint for the user. Tools catch
// it and print
//     magnets-<tool>: error: <what> (<path>): <why>
//     hint: <hint>
//
//   try { auto t = magnets::read_token_file("x.h5"); }
//   catch (const magnets::Error& e) { fprintf(stderr, "%s\n", e.what()); }
#pragma once
#include <stdexcept>
#include <string>

namespace magnets {

class Error : public std::runtime_error {
public:
    // what: short description ("cannot open token file"); path: file involved or
    // empty; why: the cause ("not an HDF5 file"); hint: what the user can do.
    Error(std::string what, std::string path = {}, std::string why = {}, std::string hint = {});

    const std::string& summary() const { return what_; }
    const std::string& path() const { return path_; }
    const std::string& why() const { return why_; }
    const std::string& hint() const { return hint_; }

private:
    std::string what_, path_, why_, hint_;
};

// Throws Error(what, {}, why, hint) when cond is false. For argument checks.
void check(bool cond, const std::string& what, const std::string& why = {}, const std::string& hint = {});

} // namespace magnets
