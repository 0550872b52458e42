// io/h5.h (private): a small RAII wrapper over the HDF5 C API.
//
// Every failure becomes magnets::Error(what, file path, why) where `why` is the
// innermost message of HDF5's error stack; HDF5's own printing of that stack
// is switched off once, on first use. Only the element types the formats need
// are supported: float32, uint16, int32 and uint8 datasets, variable-length
// UTF-8 string arrays, and int64 / double / UTF-8 string attributes.
//
//   h5::File f = h5::File::create(tmp);
//   f.set_attr("format", std::string("magnets-tokens"));
//   f.write<uint16_t>("tokens", {n, 8, 8}, ids.data(), {256, 4, true, true});
//   f.close();
//
// Not thread-safe (serial HDF5): use from one thread at a time.
#pragma once
#include "magnets/formats.h"

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace magnets::h5 {

// Owns one HDF5 identifier and closes it with the matching H5?close.
class Handle {
public:
    using Closer = herr_t (*)(hid_t);
    Handle() = default;
    Handle(hid_t id, Closer close) : id_(id), close_(close) {}
    ~Handle() { reset(); }
    Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
    Handle& operator=(Handle&& o) noexcept;
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;

    hid_t id() const { return id_; }
    bool valid() const { return id_ >= 0; }
    void reset();           // closes, ignoring errors (destructor path)
    herr_t close_checked(); // closes and returns the close status

private:
    hid_t id_ = -1;
    Closer close_ = nullptr;
};

// Element type and shape of a dataset. dtype is numpy-style: "float32",
// "uint16", "int32", "uint8", "int64", "float64", "string", or the HDF5 class
// name ("compound", "enum", ...) for anything else.
struct Info {
    std::string dtype;
    std::vector<int64_t> shape; // empty for a scalar dataset
    int64_t numel() const;
    std::string str() const;    // "uint16 [10000, 8, 8]"
};
std::string shape_str(const std::vector<int64_t>& shape); // "[10000, 8, 8]", "[]"

// How a dataset is stored. chunk_rows > 0 chunks along the first dimension
// (the other dimensions whole); gzip and shuffle need chunking; extendable
// makes the first dimension unlimited so rows can be appended later.
struct WriteOptions {
    int64_t chunk_rows = 0;
    int gzip_level = -1; // 0-9; < 0 = no compression
    bool shuffle = false;
    bool extendable = false;
};

// A file or a group. Names are relative HDF5 paths ("weights/enc.conv0.w");
// '/' in a name written here creates intermediate groups.
class Node {
public:
    const std::string& file_path() const { return file_path_; }
    const std::string& name() const { return name_; } // "/" or "/weights"
    hid_t id() const { return handle_.id(); }

    bool has(const std::string& name) const; // a link of that name exists
    bool has_dataset(const std::string& name) const;
    Node group(const std::string& name) const;        // opens; throws if missing
    Node create_group(const std::string& name) const; // creates parents too

    // shape.size() == 0 writes a scalar. T: float, uint16_t, int32_t, uint8_t.
    template <class T>
    void write(const std::string& name, const std::vector<int64_t>& shape, const T* data,
               const WriteOptions& opt = {}) const;
    void write_strings(const std::string& name, const std::vector<std::string>& values) const;

    Info info(const std::string& name) const;
    // Reads the whole dataset into out[0, n); throws when the stored type is not
    // exactly T or the element count is not n.
    template <class T>
    void read(const std::string& name, T* out, int64_t n) const;
    template <class T>
    std::vector<T> read(const std::string& name) const;
    std::vector<std::string> read_strings(const std::string& name) const;
    // Appends `rows` rows along the extendable first dimension.
    template <class T>
    void append(const std::string& name, int64_t rows, const T* data) const;

    void set_attr(const std::string& key, const AttrValue& value) const; // replaces
    void set_attrs(const Attrs& attrs) const;
    // All attributes of this node. Integers read as int64, floats as double,
    // strings (variable or fixed length) as strings; arrays and other types
    // become a descriptive string ("[1, 2, 3]", "<compound>") so foreign files
    // can still be described.
    Attrs attrs() const;

    // Every dataset below this node, recursively, with paths relative to it, in
    // HDF5's name order (the order h5dump and h5py show).
    std::vector<std::pair<std::string, Info>> datasets() const;

protected:
    Node(Handle h, std::string file_path, std::string name)
        : handle_(std::move(h)), file_path_(std::move(file_path)), name_(std::move(name)) {}
    std::string child_name(const std::string& name) const;
    [[noreturn]] void fail(const std::string& what) const;

    Handle handle_;
    std::string file_path_, name_;
};

class File : public Node {
public:
    // Creates (truncates) `path` for writing.
    static File create(const std::string& path);
    // Opens an existing file. Missing, non-HDF5 and truncated files throw
    // Error("cannot open file", path, why, hint); non-HDF5 and truncated files
    // get the caller's `hint` (for example "re-create it with magnets-tokenize").
    static File open(const std::string& path, bool writable = false, const std::string& hint = {});
    // Flushes and closes, throwing on failure (the destructor ignores errors).
    void close();

private:
    using Node::Node;
};

// ---- shared by the file formats ------------------------------------------------

// Root attributes every magnets file carries: format, format_version, creator,
// creator_version (magnets::version_string) and created (ISO-8601 UTC).
void write_standard_attrs(const Node& root, const std::string& format, int64_t version,
                          const std::string& creator);
// The keys write_standard_attrs owns; user attributes may not reuse them.
bool is_standard_attr(const std::string& key);
// "2024-05-01T12:34:56Z"
std::string utc_timestamp();
// Checks a file's root `format` and `format_version` attributes. Throws
// Error(not_what, path, why, hint) for a missing or different format (the hint
// names the file's actual format and creator, then `hint`), and an Error with
// hint "upgrade magnets" for a version newer than max_version.
void check_format(const Attrs& root, const std::string& path, const std::string& expected_format,
                  int64_t max_version, const std::string& not_what, const std::string& hint);

// Innermost message on HDF5's error stack ("file signature not found"), then
// clears the stack. Empty when the stack is empty.
std::string last_error();
// Switches off HDF5's automatic error printing (idempotent; called by File).
void init();

} // namespace magnets::h5
