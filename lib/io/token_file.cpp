// io/token_file.cpp: token files, format "magnets-tokens" version 1.
//
// Layout (documented in magnets-formats(5)):
//   root attrs   format, format_version, creator, creator_version, created,
//                codebook_size, grid_t, grid_h, grid_w, count, split,
//                tokenizer_hash, source, num_classes, + TokenFile::extra
//   /tokens      uint16 [count, h, w] (grid_t == 1) or [count, t, h, w];
//                chunked by items, gzip 4 + shuffle, first dim unlimited
//   /labels      int32 [count] (-1 = unlabelled), chunked, first dim unlimited
//   /class_names vlen UTF-8 strings [num_classes]
#include "io/h5.h"
#include "magnets/error.h"
#include "magnets/formats.h"

#include <algorithm>
#include <filesystem>
#include <set>

namespace magnets {
namespace {

constexpr const char* reopen_hint = "re-create it with magnets-tokenize";
constexpr const char* not_token_file = "not a magnets token file";

// Attributes the layout owns; TokenFile::extra may not reuse them.
const std::set<std::string>& layout_attrs() {
    static const std::set<std::string> keys = {
        "format", "format_version", "creator", "creator_version", "created", "codebook_size",
        "grid_t", "grid_h", "grid_w", "count", "split", "tokenizer_hash", "source", "num_classes"};
    return keys;
}

std::vector<int64_t> token_shape(int64_t count, int64_t t, int64_t h, int64_t w) {
    if (t == 1) return {count, h, w};
    return {count, t, h, w};
}

// Items per chunk: about 256, fewer for large (video) items so a chunk stays
// within HDF5's default 1 MiB chunk cache.
int64_t chunk_items(int64_t tokens_per_item) {
    const int64_t bytes = std::max<int64_t>(1, tokens_per_item * 2);
    return std::clamp<int64_t>((int64_t(1) << 20) / bytes, 1, 256);
}
constexpr int64_t label_chunk = 4096;

std::string grid_str(int64_t t, int64_t h, int64_t w) {
    return std::to_string(t) + "x" + std::to_string(h) + "x" + std::to_string(w);
}

// First token >= codebook_size, or -1.
int64_t first_bad_token(const std::vector<uint16_t>& tokens, int64_t codebook_size) {
    for (size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] >= codebook_size) return static_cast<int64_t>(i);
    return -1;
}

void check_tokens(const std::vector<uint16_t>& tokens, int64_t codebook_size, int64_t per_item,
                  const std::string& what, const std::string& path, const std::string& hint) {
    const int64_t bad = first_bad_token(tokens, codebook_size);
    if (bad >= 0)
        throw Error(what, path,
                    "token " + std::to_string(tokens[bad]) + " at index " + std::to_string(bad) + " (item " +
                        std::to_string(bad / per_item) + ") is >= codebook_size " +
                        std::to_string(codebook_size),
                    hint);
}

void check_labels(const std::vector<int32_t>& labels, int64_t num_classes, const std::string& what,
                  const std::string& path, const std::string& hint) {
    for (size_t i = 0; i < labels.size(); ++i) {
        const int32_t l = labels[i];
        if (l < -1 || (num_classes > 0 && l >= num_classes))
            throw Error(what, path,
                        "label " + std::to_string(l) + " at index " + std::to_string(i) +
                            " is outside [-1, " + std::to_string(num_classes) + ")",
                        hint);
    }
}

// Everything write and append check before touching the disk.
void validate(const TokenFile& tf, const std::string& what, const std::string& path) {
    const std::string hint = "this is a bug in the program that produced the tokens";
    if (tf.grid_t < 1 || tf.grid_h < 1 || tf.grid_w < 1)
        throw Error(what, path, "invalid grid " + grid_str(tf.grid_t, tf.grid_h, tf.grid_w), hint);
    if (tf.codebook_size < 1 || tf.codebook_size > 65536)
        throw Error(what, path,
                    "codebook_size " + std::to_string(tf.codebook_size) + " is outside [1, 65536]", hint);
    const int64_t expected = tf.count() * tf.tokens_per_item();
    if (static_cast<int64_t>(tf.tokens.size()) != expected)
        throw Error(what, path,
                    std::to_string(tf.tokens.size()) + " tokens for " + std::to_string(tf.count()) +
                        " labels of " + std::to_string(tf.tokens_per_item()) + " tokens each (expected " +
                        std::to_string(expected) + ")",
                    hint);
    check_tokens(tf.tokens, tf.codebook_size, tf.tokens_per_item(), what, path, hint);
    check_labels(tf.labels, static_cast<int64_t>(tf.class_names.size()), what, path, hint);
    for (const auto& [k, v] : tf.extra)
        if (layout_attrs().count(k))
            throw Error(what, path, "extra attribute '" + k + "' clashes with a layout attribute",
                        "rename the attribute");
}

struct Header {
    int64_t version = 0, codebook_size = 0, grid_t = 0, grid_h = 0, grid_w = 0, count = 0, num_classes = 0;
    std::string split, tokenizer_hash, source;
    Attrs extra;
};

// Reads and checks the root attributes (format and version first).
Header read_header(const h5::File& f) {
    const std::string& path = f.file_path();
    const Attrs a = f.attrs();
    h5::check_format(a, path, token_format, token_format_version, not_token_file,
                     "pass a token file written by magnets-tokenize");
    Header h;
    h.version = attr_int(a, "format_version", path);
    h.codebook_size = attr_int(a, "codebook_size", path);
    h.grid_t = attr_int(a, "grid_t", path);
    h.grid_h = attr_int(a, "grid_h", path);
    h.grid_w = attr_int(a, "grid_w", path);
    h.count = attr_int(a, "count", path);
    h.num_classes = attr_int(a, "num_classes", path);
    h.split = attr_string(a, "split", path);
    h.tokenizer_hash = attr_string(a, "tokenizer_hash", path);
    h.source = attr_string(a, "source", path);
    for (const auto& [k, v] : a)
        if (!layout_attrs().count(k)) h.extra[k] = v;
    const std::string bad = "invalid token file";
    if (h.grid_t < 1 || h.grid_h < 1 || h.grid_w < 1)
        throw Error(bad, path, "invalid grid " + grid_str(h.grid_t, h.grid_h, h.grid_w), reopen_hint);
    if (h.codebook_size < 1 || h.codebook_size > 65536)
        throw Error(bad, path, "codebook_size " + std::to_string(h.codebook_size) + " is outside [1, 65536]",
                    reopen_hint);
    if (h.count < 0 || h.num_classes < 0)
        throw Error(bad, path, "negative count or num_classes", reopen_hint);
    return h;
}

// Checks that dataset `name` has the shape the attributes promise.
void check_shape(const h5::File& f, const std::string& name, const std::vector<int64_t>& expected) {
    const h5::Info info = f.info(name);
    if (info.shape != expected)
        throw Error("invalid token file", f.file_path(),
                    "/" + name + " has shape " + h5::shape_str(info.shape) + " but the attributes say " +
                        h5::shape_str(expected),
                    reopen_hint);
}

} // namespace

void write_token_file(const std::string& path, const TokenFile& tf, const std::string& creator) {
    validate(tf, "cannot write token file", path);
    AtomicOutput out(path);
    h5::File f = h5::File::create(out.temp_path());
    h5::write_standard_attrs(f, token_format, token_format_version, creator);
    f.set_attr("codebook_size", tf.codebook_size);
    f.set_attr("grid_t", tf.grid_t);
    f.set_attr("grid_h", tf.grid_h);
    f.set_attr("grid_w", tf.grid_w);
    f.set_attr("count", tf.count());
    f.set_attr("split", tf.split);
    f.set_attr("tokenizer_hash", tf.tokenizer_hash);
    f.set_attr("source", tf.source);
    f.set_attr("num_classes", static_cast<int64_t>(tf.class_names.size()));
    f.set_attrs(tf.extra);

    const int64_t per_item = tf.tokens_per_item();
    f.write<uint16_t>("tokens", token_shape(tf.count(), tf.grid_t, tf.grid_h, tf.grid_w), tf.tokens.data(),
                      {chunk_items(per_item), 4, true, true});
    f.write<int32_t>("labels", {tf.count()}, tf.labels.data(), {label_chunk, 4, true, true});
    f.write_strings("class_names", tf.class_names);
    for (const auto& [name, values] : tf.extra_datasets) {
        if (name.empty() || name == "tokens" || name == "labels" || name == "class_names")
            throw Error("cannot write token file", path, "extra dataset name '" + name + "' is reserved or empty");
        f.write<float>(name, {static_cast<int64_t>(values.size())}, values.data());
    }
    f.close();
    out.commit();
}

TokenFile read_token_file(const std::string& path) {
    h5::File f = h5::File::open(path, false, reopen_hint);
    const Header h = read_header(f);
    TokenFile tf;
    tf.grid_t = h.grid_t;
    tf.grid_h = h.grid_h;
    tf.grid_w = h.grid_w;
    tf.codebook_size = h.codebook_size;
    tf.split = h.split;
    tf.tokenizer_hash = h.tokenizer_hash;
    tf.source = h.source;
    tf.extra = h.extra;

    check_shape(f, "tokens", token_shape(h.count, h.grid_t, h.grid_h, h.grid_w));
    check_shape(f, "labels", {h.count});
    tf.tokens = f.read<uint16_t>("tokens");
    tf.labels = f.read<int32_t>("labels");
    if (f.has_dataset("class_names")) tf.class_names = f.read_strings("class_names");
    if (static_cast<int64_t>(tf.class_names.size()) != h.num_classes)
        throw Error("invalid token file", path,
                    "/class_names has " + std::to_string(tf.class_names.size()) +
                        " entries but num_classes is " + std::to_string(h.num_classes),
                    reopen_hint);
    check_tokens(tf.tokens, tf.codebook_size, tf.tokens_per_item(), "invalid token file", path, reopen_hint);
    check_labels(tf.labels, h.num_classes, "invalid token file", path, reopen_hint);
    return tf;
}

void append_token_file(const std::string& path, const TokenFile& more) {
    const std::string what = "cannot append to token file";
    validate(more, what, path);
    Header h;
    {
        h5::File f = h5::File::open(path, false, reopen_hint);
        h = read_header(f);
        check_shape(f, "tokens", token_shape(h.count, h.grid_t, h.grid_h, h.grid_w));
        check_shape(f, "labels", {h.count});
        if (h.grid_t != more.grid_t || h.grid_h != more.grid_h || h.grid_w != more.grid_w)
            throw Error(what, path,
                        "its grid is " + grid_str(h.grid_t, h.grid_h, h.grid_w) + ", the new items' is " +
                            grid_str(more.grid_t, more.grid_h, more.grid_w),
                        "append only tokens from the same tokenizer");
        if (h.codebook_size != more.codebook_size)
            throw Error(what, path,
                        "its codebook_size is " + std::to_string(h.codebook_size) + ", the new items' is " +
                            std::to_string(more.codebook_size),
                        "append only tokens from the same tokenizer");
        if (h.tokenizer_hash != more.tokenizer_hash)
            throw Error(what, path,
                        "its tokenizer_hash is '" + h.tokenizer_hash + "', the new items' is '" +
                            more.tokenizer_hash + "'",
                        "append only tokens from the same tokenizer (or write a new file)");
        if (!more.class_names.empty()) {
            const std::vector<std::string> names =
                f.has_dataset("class_names") ? f.read_strings("class_names") : std::vector<std::string>{};
            if (names != more.class_names)
                throw Error(what, path, "the new items' class names differ from the file's",
                            "append items of the same dataset");
        }
        check_labels(more.labels, h.num_classes, what, path, "labels must index the file's class names");
        f.close();
    }
    AtomicOutput out(path);
    std::error_code ec;
    std::filesystem::copy_file(path, out.temp_path(), std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) throw Error(what, path, "cannot copy it to '" + out.temp_path() + "': " + ec.message());
    h5::File f = h5::File::open(out.temp_path(), true, reopen_hint);
    f.append<uint16_t>("tokens", more.count(), more.tokens.data());
    f.append<int32_t>("labels", more.count(), more.labels.data());
    f.set_attr("count", h.count + more.count());
    f.close();
    out.commit();
}

} // namespace magnets
