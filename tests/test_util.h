// tests/test_util.h: helpers shared by the unit tests.
#pragma once
#include <doctest.h>
#include <hdf5.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace magnets::test {

// A whole HDF5 dataset converted to `type` (a fixture reader independent of
// the library's own HDF5 code).
template <class T> std::vector<T> read_ds(const std::string& path, const std::string& name, hid_t type) {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    REQUIRE_MESSAGE(f >= 0, path);
    hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
    REQUIRE_MESSAGE(d >= 0, name);
    hid_t s = H5Dget_space(d);
    const hssize_t n = H5Sget_simple_extent_npoints(s);
    std::vector<T> v(static_cast<size_t>(n));
    REQUIRE(H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0);
    H5Sclose(s); H5Dclose(d); H5Fclose(f);
    return v;
}

// A fresh directory under the temp dir, removed with everything in it at scope exit.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string templ = (std::filesystem::temp_directory_path() / "magnets-test-XXXXXX").string();
        REQUIRE(mkdtemp(templ.data()) != nullptr);
        path = templ;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string operator/(const std::string& name) const { return (path / name).string(); }
    // Names of the entries, sorted.
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        for (const auto& e : std::filesystem::directory_iterator(path)) out.push_back(e.path().filename().string());
        std::sort(out.begin(), out.end());
        return out;
    }
};

} // namespace magnets::test
