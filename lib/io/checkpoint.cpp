// io/checkpoint.cpp: checkpoints (weights + optional train state), attribute
// helpers, weights_hash and describe_file.
//
// Layout (documented in magnets-formats(5)):
//   root attrs    format, format_version, creator, creator_version, created, + Checkpoint::attrs
//   /weights/<name>      float32, the tensor's shape ('/' in a name makes subgroups)
//   /ema/<name>          float32 (optional)
//   /train_state/<name>  float32 (optional)
//   /train_state attrs   Checkpoint::state_attrs
#include "io/h5.h"
#include "magnets/error.h"
#include "magnets/formats.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace magnets {
namespace {

constexpr const char* checkpoint_hint = "re-create it with the magnets tool that wrote it";

const char* kind_name(const AttrValue& v) {
    if (std::holds_alternative<int64_t>(v)) return "integer";
    if (std::holds_alternative<double>(v)) return "number";
    return "string";
}

const AttrValue& find_attr(const Attrs& a, const std::string& key, const std::string& path) {
    auto it = a.find(key);
    if (it == a.end())
        throw Error("missing attribute '" + key + "'", path, "the required attribute is not in the file",
                    "the file is damaged or was not written by this version of magnets");
    return it->second;
}

[[noreturn]] void wrong_type(const std::string& key, const std::string& path, const char* expected,
                             const AttrValue& v) {
    throw Error("attribute '" + key + "' has the wrong type", path,
                std::string("expected ") + expected + ", found " + kind_name(v) + " '" + attr_to_string(v) + "'",
                "the file is damaged or was not written by this version of magnets");
}

// A name must be a relative HDF5 path without empty, "." or ".." components.
void check_tensor_name(const std::string& name, const std::string& path) {
    bool ok = !name.empty() && name.front() != '/' && name.back() != '/' &&
              name.find("//") == std::string::npos;
    size_t pos = 0;
    while (ok && pos <= name.size()) {
        size_t slash = name.find('/', pos);
        if (slash == std::string::npos) slash = name.size();
        const std::string part = name.substr(pos, slash - pos);
        ok = part != "." && part != "..";
        pos = slash + 1;
    }
    if (!ok)
        throw Error("cannot write checkpoint", path, "invalid tensor name '" + name + "'",
                    "names are non-empty, relative and '/'-separated");
}

// Contiguous f32 data of `t`: the tensor itself, or a packed copy of a view.
struct Packed {
    Tensor holder;
    const float* data = nullptr;
};
Packed packed(const Tensor& t) {
    Packed p;
    if (t.is_contiguous()) {
        p.data = t.data();
    } else {
        p.holder = t.clone();
        p.data = p.holder.data();
    }
    return p;
}

void write_tensors(const h5::Node& group, const std::map<std::string, Tensor>& tensors,
                   const std::string& path) {
    for (const auto& [name, t] : tensors) {
        check_tensor_name(name, path);
        if (!t.data())
            throw Error("cannot write checkpoint", path, "tensor '" + name + "' has no data");
        const Packed p = packed(t);
        group.write<float>(name, t.shape(), p.data);
    }
}

std::map<std::string, Tensor> read_tensors(const h5::Node& group) {
    std::map<std::string, Tensor> out;
    for (const auto& [name, info] : group.datasets()) {
        if (info.dtype != "float32")
            throw Error("invalid checkpoint", group.file_path(),
                        group.name() + "/" + name + " is " + info.dtype + ", expected float32", checkpoint_hint);
        Tensor t(info.shape);
        group.read<float>(name, t.data(), info.numel());
        out.emplace(name, std::move(t));
    }
    return out;
}

void check_user_attrs(const Attrs& attrs, const std::string& path) {
    for (const auto& [k, v] : attrs)
        if (h5::is_standard_attr(k))
            throw Error("cannot write checkpoint", path, "attribute '" + k + "' is reserved for the file header",
                        "rename the attribute");
}

Attrs without_standard(const Attrs& a) {
    Attrs out;
    for (const auto& [k, v] : a)
        if (!h5::is_standard_attr(k)) out.emplace(k, v);
    return out;
}

} // namespace

// ---- attributes ------------------------------------------------------------------

std::string attr_to_string(const AttrValue& v) {
    if (auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
    if (auto* s = std::get_if<std::string>(&v)) return *s;
    const double d = std::get<double>(v);
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
    // Shortest decimal that reads back to the same double.
    char buf[32];
    for (int prec = 1; prec <= 17; ++prec) {
        std::snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (std::strtod(buf, nullptr) == d) break;
    }
    return buf;
}

int64_t attr_int(const Attrs& a, const std::string& key, const std::string& path) {
    const AttrValue& v = find_attr(a, key, path);
    if (auto* i = std::get_if<int64_t>(&v)) return *i;
    wrong_type(key, path, "an integer", v);
}

double attr_double(const Attrs& a, const std::string& key, const std::string& path) {
    const AttrValue& v = find_attr(a, key, path);
    if (auto* d = std::get_if<double>(&v)) return *d;
    if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
    wrong_type(key, path, "a number", v);
}

std::string attr_string(const Attrs& a, const std::string& key, const std::string& path) {
    const AttrValue& v = find_attr(a, key, path);
    if (auto* s = std::get_if<std::string>(&v)) return *s;
    wrong_type(key, path, "a string", v);
}

// ---- checkpoints -----------------------------------------------------------------

void write_checkpoint(const std::string& path, const Checkpoint& ck, const std::string& creator) {
    if (ck.format.empty()) throw Error("cannot write checkpoint", path, "no format name given");
    if (ck.format_version < 1)
        throw Error("cannot write checkpoint", path,
                    "format_version " + std::to_string(ck.format_version) + " (versions start at 1)");
    check_user_attrs(ck.attrs, path);
    AtomicOutput out(path);
    h5::File f = h5::File::create(out.temp_path());
    h5::write_standard_attrs(f, ck.format, ck.format_version, creator);
    f.set_attrs(ck.attrs);
    write_tensors(f.create_group("weights"), ck.weights, path);
    if (!ck.ema.empty()) write_tensors(f.create_group("ema"), ck.ema, path);
    if (ck.has_state()) {
        h5::Node state = f.create_group("train_state");
        write_tensors(state, ck.state, path);
        state.set_attrs(ck.state_attrs);
    }
    f.close();
    out.commit();
}

Checkpoint read_checkpoint(const std::string& path, const std::string& expected_format, int64_t max_version,
                           bool load_state) {
    h5::File f = h5::File::open(path, false,
                                "expected a " + expected_format + " file; " + checkpoint_hint);
    const Attrs root = f.attrs();
    h5::check_format(root, path, expected_format, max_version, "not a " + expected_format + " file",
                     "pass a " + expected_format + " file");
    Checkpoint ck;
    ck.format = expected_format;
    ck.format_version = attr_int(root, "format_version", path);
    ck.attrs = without_standard(root);
    if (!f.has("weights"))
        throw Error("invalid " + expected_format + " file", path, "it has no /weights group", checkpoint_hint);
    ck.weights = read_tensors(f.group("weights"));
    if (f.has("ema")) ck.ema = read_tensors(f.group("ema"));
    if (load_state && f.has("train_state")) {
        h5::Node state = f.group("train_state");
        ck.state = read_tensors(state);
        ck.state_attrs = state.attrs();
    }
    return ck;
}

// FNV-1a 64 over, for each tensor in name order: the name's bytes, a 0 byte,
// the rank and dims as little-endian int64, then the values' f32 bytes.
std::string weights_hash(const std::map<std::string, Tensor>& weights) {
    uint64_t h = 14695981039346656037ull;
    auto feed = [&h](const void* p, size_t n) {
        const auto* b = static_cast<const unsigned char*>(p);
        for (size_t i = 0; i < n; ++i) {
            h ^= b[i];
            h *= 1099511628211ull;
        }
    };
    auto feed_i64 = [&feed](int64_t v) {
        unsigned char b[8];
        for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
        feed(b, 8);
    };
    for (const auto& [name, t] : weights) {
        feed(name.data(), name.size() + 1); // includes the terminating 0
        feed_i64(t.rank());
        for (int64_t d : t.shape()) feed_i64(d);
        if (t.numel() > 0 && t.data()) {
            const Packed p = packed(t);
            feed(p.data, static_cast<size_t>(t.numel()) * sizeof(float));
        }
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

FileSummary describe_file(const std::string& path) {
    h5::File f = h5::File::open(path, false);
    FileSummary s;
    s.root_attrs = f.attrs();
    for (const auto& [name, info] : f.datasets()) s.datasets.emplace_back("/" + name, info.str());
    return s;
}

} // namespace magnets
