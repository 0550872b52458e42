#include "magnets/tensor.h"

#include "magnets/error.h"

#include <algorithm>
#include <cstring>

namespace magnets {

static std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
    std::vector<int64_t> s(shape.size());
    int64_t acc = 1;
    for (size_t i = shape.size(); i-- > 0;) { s[i] = acc; acc *= shape[i]; }
    return s;
}

Tensor::Tensor(std::vector<int64_t> shape) : shape_(std::move(shape)) {
    for (int64_t d : shape_) check(d >= 0, "tensor shape", "negative dimension");
    strides_ = contiguous_strides(shape_);
    int64_t n = numel();
    storage_ = std::shared_ptr<float[]>(new float[static_cast<size_t>(std::max<int64_t>(n, 1))]());
    ptr_ = storage_.get();
    capacity_ = std::max<int64_t>(n, 1);
}

void Tensor::resize(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
        check(d >= 0, "tensor shape", "negative dimension");
        n *= d;
    }
    if (ptr_ && storage_ && storage_.use_count() == 1 && ptr_ == storage_.get() && n <= capacity_) {
        shape_ = shape;
        strides_ = contiguous_strides(shape_);
        return;
    }
    *this = Tensor(shape);
}

int64_t Tensor::numel() const {
    if (shape_.empty()) return ptr_ ? 1 : 0;
    int64_t n = 1;
    for (int64_t d : shape_) n *= d;
    return n;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

std::string Tensor::shape_str() const {
    std::string s = "[";
    for (size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
    return s + "]";
}

Tensor Tensor::prefix(const std::vector<int64_t>& sizes) const {
    check(sizes.size() == shape_.size(), "tensor prefix", "rank mismatch: " + shape_str());
    for (size_t i = 0; i < sizes.size(); ++i)
        check(sizes[i] >= 0 && sizes[i] <= shape_[i], "tensor prefix",
              "block larger than tensor " + shape_str());
    Tensor t = *this;
    t.shape_ = sizes;
    return t;
}

Tensor Tensor::reshape(const std::vector<int64_t>& shape) const {
    check(is_contiguous(), "tensor reshape", "view is not contiguous");
    Tensor t = *this;
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    check(t.numel() == numel(), "tensor reshape", shape_str() + " has a different element count");
    return t;
}

template <class F> static void for_each_offset(const std::vector<int64_t>& shape, const std::vector<int64_t>& strides, F f) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (n == 0) return;
    std::vector<int64_t> idx(shape.size(), 0);
    for (int64_t k = 0; k < n; ++k) {
        int64_t off = 0;
        for (size_t i = 0; i < shape.size(); ++i) off += idx[i] * strides[i];
        f(k, off);
        for (size_t i = shape.size(); i-- > 0;) {
            if (++idx[i] < shape[i]) break;
            idx[i] = 0;
        }
    }
}

Tensor Tensor::clone() const {
    Tensor t(shape_);
    if (is_contiguous()) {
        if (numel()) std::memcpy(t.ptr_, ptr_, sizeof(float) * static_cast<size_t>(numel()));
    } else {
        for_each_offset(shape_, strides_, [&](int64_t k, int64_t off) { t.ptr_[k] = ptr_[off]; });
    }
    return t;
}

Mat Tensor::mat() {
    if (rank() == 2 && strides_[1] == 1) return {ptr_, shape_[0], shape_[1], strides_[0]};
    check(rank() >= 1 && is_contiguous(), "tensor as matrix", "needs rank 2 with unit column stride or a contiguous tensor, got " + shape_str());
    int64_t last = shape_.back();
    return {ptr_, last ? numel() / last : 0, last, last};
}

ConstMat Tensor::mat() const { return const_cast<Tensor*>(this)->mat(); }

void Tensor::fill(float v) {
    if (is_contiguous()) std::fill(ptr_, ptr_ + numel(), v);
    else for_each_offset(shape_, strides_, [&](int64_t, int64_t off) { ptr_[off] = v; });
}

float& Tensor::at(int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    const int64_t idx[4] = {i0, i1, i2, i3};
    int64_t off = 0;
    for (int i = 0; i < rank() && i < 4; ++i) off += idx[i] * strides_[i];
    return ptr_[off];
}

float Tensor::at(int64_t i0, int64_t i1, int64_t i2, int64_t i3) const {
    return const_cast<Tensor*>(this)->at(i0, i1, i2, i3);
}

} // namespace magnets
