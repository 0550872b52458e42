// magnets/tensor.h: f32 tensors with shapes and strides, and 2-D matrix views.
//
// A Tensor owns (shares) a host buffer and describes a strided view of it.
// Views never copy: prefix() keeps the parent's strides, so the leading
// [r, c] block of a weight matrix [out, in] is a view with ld = in. This is how
// nested sub-models run on the shared weights.
//
//   magnets::Tensor w({768, 3072});            // zero-filled, contiguous
//   magnets::Tensor w4 = w.prefix({192, 768}); // leading block, no copy
//   magnets::Mat m = w4.mat();                 // {data, rows=192, cols=768, ld=3072}
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace magnets {

// Row-major matrix view: element (i, j) lives at data[i * ld + j], ld >= cols.
struct Mat {
    float* data = nullptr;
    int64_t rows = 0, cols = 0, ld = 0;
};
struct ConstMat {
    const float* data = nullptr;
    int64_t rows = 0, cols = 0, ld = 0;
    ConstMat() = default;
    ConstMat(const float* d, int64_t r, int64_t c, int64_t l) : data(d), rows(r), cols(c), ld(l) {}
    ConstMat(const Mat& m) : data(m.data), rows(m.rows), cols(m.cols), ld(m.ld) {}
};
// Contiguous matrix helpers.
inline Mat mat(float* d, int64_t rows, int64_t cols) { return {d, rows, cols, cols}; }
inline ConstMat cmat(const float* d, int64_t rows, int64_t cols) { return {d, rows, cols, cols}; }

class Tensor {
public:
    Tensor() = default;
    // New zero-filled contiguous tensor.
    explicit Tensor(std::vector<int64_t> shape);
    Tensor(std::initializer_list<int64_t> shape) : Tensor(std::vector<int64_t>(shape)) {}

    float* data() { return ptr_; }
    const float* data() const { return ptr_; }
    const std::vector<int64_t>& shape() const { return shape_; }
    const std::vector<int64_t>& strides() const { return strides_; }
    int rank() const { return static_cast<int>(shape_.size()); }
    int64_t dim(int i) const { return shape_.at(i < 0 ? i + rank() : i); }
    int64_t numel() const;
    bool empty() const { return numel() == 0; }
    bool is_contiguous() const;
    std::string shape_str() const; // "[64, 3, 32, 32]"

    // View of the leading block: sizes[i] <= dim(i), same strides, no copy.
    Tensor prefix(const std::vector<int64_t>& sizes) const;
    // Contiguous tensor reinterpreted with a new shape (same numel), no copy.
    Tensor reshape(const std::vector<int64_t>& shape) const;
    // Deep copy into a new contiguous tensor.
    Tensor clone() const;
    // Becomes a contiguous tensor of `shape`, reusing its storage when that is
    // large enough and not shared with another tensor (contents then left as
    // they are, not zeroed); else new zero-filled storage. For scratch buffers
    // that a training loop refills every step: no allocation after the first.
    void resize(const std::vector<int64_t>& shape);
    // 2-D view: rank 2 with unit column stride, or contiguous rank >= 1
    // flattened to [numel / last, last].
    Mat mat();
    ConstMat mat() const;

    void fill(float v); // every element of the view
    void zero() { fill(0.0f); }
    // Element access for rank <= 4 (tests, small code).
    float& at(int64_t i0, int64_t i1 = 0, int64_t i2 = 0, int64_t i3 = 0);
    float at(int64_t i0, int64_t i1 = 0, int64_t i2 = 0, int64_t i3 = 0) const;

private:
    std::shared_ptr<float[]> storage_;
    float* ptr_ = nullptr;
    int64_t capacity_ = 0; // elements of storage_ from ptr_ on
    std::vector<int64_t> shape_, strides_;
};

} // namespace magnets
