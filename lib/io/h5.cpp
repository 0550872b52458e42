// io/h5.cpp: RAII HDF5 wrapper (see h5.h).
#include "io/h5.h"

#include "magnets/error.h"
#include "magnets/version.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <ctime>

namespace magnets::h5 {
namespace {

// File and memory types per element type; file types are fixed little-endian
// so files are identical on every host.
template <class T> struct Traits;
template <> struct Traits<float> {
    static hid_t mem() { return H5T_NATIVE_FLOAT; }
    static hid_t file() { return H5T_IEEE_F32LE; }
    static constexpr const char* name = "float32";
};
template <> struct Traits<uint16_t> {
    static hid_t mem() { return H5T_NATIVE_UINT16; }
    static hid_t file() { return H5T_STD_U16LE; }
    static constexpr const char* name = "uint16";
};
template <> struct Traits<int32_t> {
    static hid_t mem() { return H5T_NATIVE_INT32; }
    static hid_t file() { return H5T_STD_I32LE; }
    static constexpr const char* name = "int32";
};
template <> struct Traits<uint8_t> {
    static hid_t mem() { return H5T_NATIVE_UINT8; }
    static hid_t file() { return H5T_STD_U8LE; }
    static constexpr const char* name = "uint8";
};

Handle type_handle(hid_t id) { return Handle(id, H5Tclose); }
Handle space_handle(hid_t id) { return Handle(id, H5Sclose); }
Handle plist_handle(hid_t id) { return Handle(id, H5Pclose); }

// Variable-length UTF-8 string type (h5py reads it as str).
Handle utf8_vlen_type() {
    Handle t = type_handle(H5Tcopy(H5T_C_S1));
    H5Tset_size(t.id(), H5T_VARIABLE);
    H5Tset_cset(t.id(), H5T_CSET_UTF8);
    return t;
}

std::string type_name(hid_t t) {
    const size_t bits = H5Tget_size(t) * 8;
    switch (H5Tget_class(t)) {
    case H5T_INTEGER:
        return (H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_FLOAT: return "float" + std::to_string(bits);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_OPAQUE: return "opaque";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "vlen";
    case H5T_REFERENCE: return "reference";
    case H5T_BITFIELD: return "bitfield";
    case H5T_TIME: return "time";
    default: return "unknown";
    }
}

std::vector<int64_t> space_shape(hid_t space) {
    const int rank = H5Sget_simple_extent_ndims(space);
    std::vector<hsize_t> dims(rank > 0 ? rank : 0);
    if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
    return std::vector<int64_t>(dims.begin(), dims.end());
}

Info object_info(hid_t ds) {
    Handle type = type_handle(H5Dget_type(ds));
    Handle space = space_handle(H5Dget_space(ds));
    return Info{type_name(type.id()), space_shape(space.id())};
}

herr_t walk_innermost(unsigned n, const H5E_error2_t* err, void* data) {
    if (n != 0) return 0;
    auto* out = static_cast<std::string*>(data);
    if (err->desc && *err->desc) {
        *out = err->desc;
    } else {
        char buf[256] = {};
        if (H5Eget_msg(err->min_num, nullptr, buf, sizeof buf) > 0) *out = buf;
    }
    return 0;
}

// Fixed-length strings are padded with NULs or spaces: strip the padding.
std::string trim_fixed(const char* p, size_t size) {
    size_t n = strnlen(p, size);
    while (n > 0 && p[n - 1] == ' ') --n;
    return std::string(p, n);
}

// Reads `npoints` strings of `type` from an attribute or dataset.
template <class ReadFn>
std::vector<std::string> read_string_values(hid_t type, hid_t space, int64_t npoints, ReadFn read) {
    std::vector<std::string> out;
    if (npoints <= 0) return out;
    if (H5Tis_variable_str(type) > 0) {
        Handle mem = type_handle(H5Tcopy(type));
        std::vector<char*> ptrs(npoints, nullptr);
        if (read(mem.id(), ptrs.data()) < 0) return {};
        for (char* p : ptrs) out.emplace_back(p ? p : "");
        H5Dvlen_reclaim(mem.id(), space, H5P_DEFAULT, ptrs.data());
    } else {
        const size_t size = H5Tget_size(type);
        Handle mem = type_handle(H5Tcopy(type));
        std::vector<char> buf(size * npoints + 1, 0);
        if (read(mem.id(), buf.data()) < 0) return {};
        for (int64_t i = 0; i < npoints; ++i) out.push_back(trim_fixed(buf.data() + i * size, size));
    }
    return out;
}

std::string join_list(const std::vector<std::string>& items) {
    std::string s = "[";
    for (size_t i = 0; i < items.size(); ++i) s += (i ? ", " : "") + items[i];
    return s + "]";
}

// Reads one attribute; see Node::attrs() for the conversions.
AttrValue read_attr(hid_t attr) {
    Handle type = type_handle(H5Aget_type(attr));
    Handle space = space_handle(H5Aget_space(attr));
    const int64_t npoints = H5Sget_simple_extent_npoints(space.id());
    const H5T_class_t cls = H5Tget_class(type.id());
    if (cls == H5T_INTEGER || cls == H5T_FLOAT) {
        if (npoints == 1) {
            if (cls == H5T_INTEGER) {
                int64_t v = 0;
                if (H5Aread(attr, H5T_NATIVE_INT64, &v) >= 0) return v;
            } else {
                double v = 0;
                if (H5Aread(attr, H5T_NATIVE_DOUBLE, &v) >= 0) return v;
            }
            return std::string("<unreadable>");
        }
        std::vector<std::string> items;
        if (cls == H5T_INTEGER) {
            std::vector<int64_t> v(std::max<int64_t>(npoints, 0));
            if (npoints > 0 && H5Aread(attr, H5T_NATIVE_INT64, v.data()) < 0) return std::string("<unreadable>");
            for (int64_t x : v) items.push_back(std::to_string(x));
        } else {
            std::vector<double> v(std::max<int64_t>(npoints, 0));
            if (npoints > 0 && H5Aread(attr, H5T_NATIVE_DOUBLE, v.data()) < 0) return std::string("<unreadable>");
            for (double x : v) items.push_back(attr_to_string(AttrValue(x)));
        }
        return join_list(items);
    }
    if (cls == H5T_STRING) {
        auto values = read_string_values(type.id(), space.id(), npoints,
                                         [&](hid_t mem, void* buf) { return H5Aread(attr, mem, buf); });
        if (H5Sget_simple_extent_ndims(space.id()) == 0) return values.empty() ? std::string() : values[0];
        return join_list(values);
    }
    return "<" + type_name(type.id()) + ">";
}

struct AttrIterState {
    Attrs* out;
};

herr_t collect_attr(hid_t loc, const char* name, const H5A_info_t*, void* data) {
    auto* st = static_cast<AttrIterState*>(data);
    Handle a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
    if (!a.valid()) return -1;
    (*st->out)[name] = read_attr(a.id());
    return 0;
}

struct VisitState {
    std::vector<std::pair<std::string, Info>>* out;
};

herr_t collect_dataset(hid_t group, const char* name, const H5L_info_t* info, void* data) {
    if (info->type != H5L_TYPE_HARD) return 0; // soft/external links: not followed
    auto* st = static_cast<VisitState*>(data);
    Handle obj(H5Oopen(group, name, H5P_DEFAULT), H5Oclose);
    if (!obj.valid()) return 0;
    if (H5Iget_type(obj.id()) == H5I_DATASET) st->out->emplace_back(name, object_info(obj.id()));
    return 0;
}

} // namespace

// ---- basics -------------------------------------------------------------------

void init() {
    static std::once_flag once;
    std::call_once(once, [] {
        H5open();
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    });
}

std::string last_error() {
    std::string msg;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_innermost, &msg);
    H5Eclear2(H5E_DEFAULT);
    return msg;
}

Handle& Handle::operator=(Handle&& o) noexcept {
    if (this != &o) {
        reset();
        id_ = o.id_;
        close_ = o.close_;
        o.id_ = -1;
    }
    return *this;
}

void Handle::reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
}

herr_t Handle::close_checked() {
    herr_t r = 0;
    if (id_ >= 0 && close_) r = close_(id_);
    id_ = -1;
    return r;
}

int64_t Info::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string Info::str() const { return dtype + " " + shape_str(shape); }

// ---- files ----------------------------------------------------------------------

File File::create(const std::string& path) {
    init();
    Handle fapl = plist_handle(H5Pcreate(H5P_FILE_ACCESS));
    // Strong close: closing the file closes every object in it, so the bytes are
    // complete on disk before an atomic rename.
    H5Pset_fclose_degree(fapl.id(), H5F_CLOSE_STRONG);
    hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id());
    if (id < 0) throw Error("cannot create file", path, last_error());
    return File(Handle(id, H5Fclose), path, "/");
}

File File::open(const std::string& path, bool writable, const std::string& hint) {
    init();
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(path, ec)) throw Error("cannot open file", path, "no such file", "check the path");
    if (fs::is_directory(path, ec)) throw Error("cannot open file", path, "it is a directory", hint);
    const htri_t is_h5 = H5Fis_hdf5(path.c_str());
    if (is_h5 < 0) throw Error("cannot open file", path, last_error(), hint);
    if (is_h5 == 0)
        throw Error("cannot open file", path, "not an HDF5 file or truncated (no HDF5 signature)", hint);
    Handle fapl = plist_handle(H5Pcreate(H5P_FILE_ACCESS));
    H5Pset_fclose_degree(fapl.id(), H5F_CLOSE_STRONG);
    hid_t id = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.id());
    if (id < 0) {
        throw Error("cannot open file", path, "not an HDF5 file or truncated (" + last_error() + ")",
                    hint);
    }
    return File(Handle(id, H5Fclose), path, "/");
}

void File::close() {
    if (!handle_.valid()) return;
    if (H5Fflush(handle_.id(), H5F_SCOPE_LOCAL) < 0 || handle_.close_checked() < 0)
        throw Error("cannot write file", file_path_, last_error());
}

// ---- nodes ----------------------------------------------------------------------

std::string Node::child_name(const std::string& name) const {
    return name_ == "/" ? "/" + name : name_ + "/" + name;
}

void Node::fail(const std::string& what) const { throw Error(what, file_path_, last_error()); }

bool Node::has(const std::string& name) const {
    // H5Lexists fails (rather than returning false) when a parent is missing,
    // so test each component in turn.
    size_t pos = 0;
    while (true) {
        const size_t slash = name.find('/', pos);
        const std::string prefix = name.substr(0, slash);
        if (!prefix.empty() && H5Lexists(id(), prefix.c_str(), H5P_DEFAULT) <= 0) {
            H5Eclear2(H5E_DEFAULT);
            return false;
        }
        if (slash == std::string::npos) return true;
        pos = slash + 1;
    }
}

bool Node::has_dataset(const std::string& name) const {
    if (!has(name)) return false;
    Handle obj(H5Oopen(id(), name.c_str(), H5P_DEFAULT), H5Oclose);
    return obj.valid() && H5Iget_type(obj.id()) == H5I_DATASET;
}

Node Node::group(const std::string& name) const {
    if (!has(name))
        throw Error("missing group '" + child_name(name) + "'", file_path_, "the file has no such group");
    hid_t g = H5Gopen2(id(), name.c_str(), H5P_DEFAULT);
    if (g < 0) fail("cannot open group '" + child_name(name) + "'");
    return Node(Handle(g, H5Gclose), file_path_, child_name(name));
}

Node Node::create_group(const std::string& name) const {
    Handle lcpl = plist_handle(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(lcpl.id(), 1);
    hid_t g = H5Gcreate2(id(), name.c_str(), lcpl.id(), H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) fail("cannot create group '" + child_name(name) + "'");
    return Node(Handle(g, H5Gclose), file_path_, child_name(name));
}

template <class T>
void Node::write(const std::string& name, const std::vector<int64_t>& shape, const T* data,
                 const WriteOptions& opt) const {
    const std::string what = "cannot write dataset '" + child_name(name) + "'";
    const int rank = static_cast<int>(shape.size());
    std::vector<hsize_t> dims(shape.begin(), shape.end()), maxdims = dims;
    if (opt.extendable) {
        check(rank > 0 && opt.chunk_rows > 0, what, "an extendable dataset needs rank >= 1 and chunking");
        maxdims[0] = H5S_UNLIMITED;
    }
    Handle space = space_handle(rank == 0 ? H5Screate(H5S_SCALAR)
                                          : H5Screate_simple(rank, dims.data(), maxdims.data()));
    if (!space.valid()) fail(what);

    Handle dcpl = plist_handle(H5Pcreate(H5P_DATASET_CREATE));
    // A fixed-size dataset with no rows cannot be chunked (chunk dims must be
    // >= 1 and <= the fixed size), so it is stored contiguously.
    const bool chunked = rank > 0 && opt.chunk_rows > 0 && (opt.extendable || dims[0] > 0);
    if (chunked) {
        std::vector<hsize_t> chunk = dims;
        chunk[0] = opt.extendable ? static_cast<hsize_t>(opt.chunk_rows)
                                  : std::min<hsize_t>(opt.chunk_rows, dims[0]);
        for (auto& c : chunk) c = std::max<hsize_t>(c, 1);
        if (H5Pset_chunk(dcpl.id(), rank, chunk.data()) < 0) fail(what);
        if (opt.shuffle && H5Pset_shuffle(dcpl.id()) < 0) fail(what);
        if (opt.gzip_level >= 0 && H5Pset_deflate(dcpl.id(), static_cast<unsigned>(opt.gzip_level)) < 0)
            fail(what);
    }
    Handle lcpl = plist_handle(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(lcpl.id(), 1);
    Handle ds(H5Dcreate2(id(), name.c_str(), Traits<T>::file(), space.id(), lcpl.id(), dcpl.id(),
                         H5P_DEFAULT),
              H5Dclose);
    if (!ds.valid()) fail(what);
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (n > 0 && H5Dwrite(ds.id(), Traits<T>::mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) fail(what);
}

void Node::write_strings(const std::string& name, const std::vector<std::string>& values) const {
    const std::string what = "cannot write dataset '" + child_name(name) + "'";
    hsize_t dims[1] = {values.size()};
    Handle space = space_handle(H5Screate_simple(1, dims, nullptr));
    Handle type = utf8_vlen_type();
    Handle lcpl = plist_handle(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(lcpl.id(), 1);
    Handle ds(H5Dcreate2(id(), name.c_str(), type.id(), space.id(), lcpl.id(), H5P_DEFAULT, H5P_DEFAULT),
              H5Dclose);
    if (!ds.valid()) fail(what);
    std::vector<const char*> ptrs;
    for (const auto& s : values) ptrs.push_back(s.c_str());
    if (!ptrs.empty() && H5Dwrite(ds.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0)
        fail(what);
}

Info Node::info(const std::string& name) const {
    if (!has_dataset(name))
        throw Error("missing dataset '" + child_name(name) + "'", file_path_, "the file has no such dataset");
    Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.valid()) fail("cannot open dataset '" + child_name(name) + "'");
    return object_info(ds.id());
}

template <class T>
void Node::read(const std::string& name, T* out, int64_t n) const {
    const std::string full = child_name(name);
    const Info inf = info(name);
    if (inf.dtype != Traits<T>::name)
        throw Error("dataset '" + full + "' has the wrong type", file_path_,
                    "found " + inf.dtype + ", expected " + Traits<T>::name);
    if (inf.numel() != n)
        throw Error("dataset '" + full + "' has the wrong size", file_path_,
                    "shape " + shape_str(inf.shape) + " holds " + std::to_string(inf.numel()) +
                        " values, expected " + std::to_string(n));
    Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.valid()) fail("cannot open dataset '" + full + "'");
    if (n > 0 && H5Dread(ds.id(), Traits<T>::mem(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
        fail("cannot read dataset '" + full + "'");
}

template <class T>
std::vector<T> Node::read(const std::string& name) const {
    std::vector<T> out(info(name).numel());
    read<T>(name, out.data(), static_cast<int64_t>(out.size()));
    return out;
}

std::vector<std::string> Node::read_strings(const std::string& name) const {
    const std::string full = child_name(name);
    const Info inf = info(name);
    if (inf.dtype != "string")
        throw Error("dataset '" + full + "' has the wrong type", file_path_,
                    "found " + inf.dtype + ", expected string");
    Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.valid()) fail("cannot open dataset '" + full + "'");
    Handle type = type_handle(H5Dget_type(ds.id()));
    Handle space = space_handle(H5Dget_space(ds.id()));
    const int64_t n = inf.numel();
    bool ok = true;
    auto out = read_string_values(type.id(), space.id(), n, [&](hid_t mem, void* buf) {
        herr_t r = H5Dread(ds.id(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        ok = r >= 0;
        return r;
    });
    if (!ok) fail("cannot read dataset '" + full + "'");
    return out;
}

template <class T>
void Node::append(const std::string& name, int64_t rows, const T* data) const {
    const std::string full = child_name(name);
    const std::string what = "cannot append to dataset '" + full + "'";
    const Info inf = info(name);
    if (inf.dtype != Traits<T>::name)
        throw Error(what, file_path_, "found " + inf.dtype + ", expected " + Traits<T>::name);
    check(!inf.shape.empty(), what, "it is a scalar");
    if (rows <= 0) return;
    Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.valid()) fail(what);
    {
        Handle space = space_handle(H5Dget_space(ds.id()));
        std::vector<hsize_t> maxdims(inf.shape.size());
        H5Sget_simple_extent_dims(space.id(), nullptr, maxdims.data());
        if (maxdims[0] != H5S_UNLIMITED)
            throw Error(what, file_path_, "its first dimension is not extendable",
                        "re-create the file with this version of magnets");
    }
    std::vector<hsize_t> dims(inf.shape.begin(), inf.shape.end());
    const hsize_t old_rows = dims[0];
    dims[0] += rows;
    if (H5Dset_extent(ds.id(), dims.data()) < 0) fail(what);
    Handle file_space = space_handle(H5Dget_space(ds.id()));
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    start[0] = old_rows;
    count[0] = rows;
    if (H5Sselect_hyperslab(file_space.id(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) < 0)
        fail(what);
    Handle mem_space = space_handle(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
    if (H5Dwrite(ds.id(), Traits<T>::mem(), mem_space.id(), file_space.id(), H5P_DEFAULT, data) < 0)
        fail(what);
}

void Node::set_attr(const std::string& key, const AttrValue& value) const {
    const std::string what = "cannot write attribute '" + key + "' of '" + name_ + "'";
    if (H5Aexists(id(), key.c_str()) > 0 && H5Adelete(id(), key.c_str()) < 0) fail(what);
    Handle space = space_handle(H5Screate(H5S_SCALAR));
    Handle type;
    hid_t file_type = -1, mem_type = -1;
    const void* buf = nullptr;
    const char* str = nullptr;
    if (auto* i = std::get_if<int64_t>(&value)) {
        file_type = H5T_STD_I64LE;
        mem_type = H5T_NATIVE_INT64;
        buf = i;
    } else if (auto* d = std::get_if<double>(&value)) {
        file_type = H5T_IEEE_F64LE;
        mem_type = H5T_NATIVE_DOUBLE;
        buf = d;
    } else {
        type = utf8_vlen_type();
        file_type = mem_type = type.id();
        str = std::get<std::string>(value).c_str();
        buf = &str;
    }
    Handle a(H5Acreate2(id(), key.c_str(), file_type, space.id(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!a.valid() || H5Awrite(a.id(), mem_type, buf) < 0) fail(what);
}

void Node::set_attrs(const Attrs& attrs) const {
    for (const auto& [k, v] : attrs) set_attr(k, v);
}

Attrs Node::attrs() const {
    Attrs out;
    AttrIterState st{&out};
    hsize_t idx = 0;
    if (H5Aiterate2(id(), H5_INDEX_NAME, H5_ITER_INC, &idx, collect_attr, &st) < 0)
        fail("cannot read the attributes of '" + name_ + "'");
    return out;
}

std::vector<std::pair<std::string, Info>> Node::datasets() const {
    std::vector<std::pair<std::string, Info>> out;
    VisitState st{&out};
    if (H5Lvisit(id(), H5_INDEX_NAME, H5_ITER_INC, collect_dataset, &st) < 0)
        fail("cannot list the contents of '" + name_ + "'");
    return out;
}

// ---- shared by the file formats ------------------------------------------------

std::string utc_timestamp() {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

bool is_standard_attr(const std::string& key) {
    return key == "format" || key == "format_version" || key == "creator" || key == "creator_version" ||
           key == "created";
}

void write_standard_attrs(const Node& root, const std::string& format, int64_t version,
                          const std::string& creator) {
    root.set_attr("format", format);
    root.set_attr("format_version", version);
    root.set_attr("creator", creator);
    root.set_attr("creator_version", std::string(version_string));
    root.set_attr("created", utc_timestamp());
}

void check_format(const Attrs& root, const std::string& path, const std::string& expected_format,
                  int64_t max_version, const std::string& not_what, const std::string& hint) {
    auto it = root.find("format");
    if (it == root.end())
        throw Error(not_what, path, "it has no 'format' attribute (an HDF5 file not written by magnets)",
                    hint);
    const std::string* format = std::get_if<std::string>(&it->second);
    if (!format || *format != expected_format) {
        const std::string found = attr_to_string(it->second);
        std::string what_it_is = "this is a '" + found + "' file";
        auto creator = root.find("creator");
        if (creator != root.end()) what_it_is += " written by " + attr_to_string(creator->second);
        throw Error(not_what, path, "its format is '" + found + "', expected '" + expected_format + "'",
                    what_it_is + (hint.empty() ? "" : "; " + hint));
    }
    auto v = root.find("format_version");
    const int64_t* version = v == root.end() ? nullptr : std::get_if<int64_t>(&v->second);
    if (!version)
        throw Error(not_what, path, "it has no integer 'format_version' attribute",
                    "the file is damaged; " + hint);
    if (*version < 1)
        throw Error("invalid " + expected_format + " file", path,
                    "format_version " + std::to_string(*version) + " (versions start at 1)", hint);
    if (*version > max_version)
        throw Error("unsupported " + expected_format + " version", path,
                    "format_version " + std::to_string(*version) + " is newer than this magnets (" +
                        version_string + ") reads (up to " + std::to_string(max_version) + ")",
                    "upgrade magnets");
}

#define MAGNETS_H5_INSTANTIATE(T)                                                                        \
    template void Node::write<T>(const std::string&, const std::vector<int64_t>&, const T*,            \
                                 const WriteOptions&) const;                                           \
    template void Node::read<T>(const std::string&, T*, int64_t) const;                                \
    template std::vector<T> Node::read<T>(const std::string&) const;                                   \
    template void Node::append<T>(const std::string&, int64_t, const T*) const;
MAGNETS_H5_INSTANTIATE(float)
MAGNETS_H5_INSTANTIATE(uint16_t)
MAGNETS_H5_INSTANTIATE(int32_t)
MAGNETS_H5_INSTANTIATE(uint8_t)
#undef MAGNETS_H5_INSTANTIATE

} // namespace magnets::h5
