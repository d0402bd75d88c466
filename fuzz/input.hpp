// The fuzz targets' view of their input: fields taken front to back, little-endian, zeros once the
// input runs out. Not libFuzzer's FuzzedDataProvider, which takes integers from the back: with one
// simple layout, make_seeds.cpp can write valid inputs for every target with the library's encoders.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace pccl_fuzz {

class Input {
public:
    Input(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
    size_t remaining() const { return static_cast<size_t>(end_ - p_); }
    template <typename T>
    T take() {
        uint64_t v = 0;
        for (size_t i = 0; i < sizeof(T) && p_ < end_; ++i) v |= static_cast<uint64_t>(*p_++) << (8 * i);
        return static_cast<T>(v);
    }
    // A value in [0, n) (n > 0) from one byte, or two when n > 256.
    size_t below(size_t n) { return n <= 256 ? take<uint8_t>() % n : take<uint16_t>() % n; }
    std::vector<uint8_t> bytes(size_t n) {
        n = std::min(n, remaining());
        std::vector<uint8_t> out(p_, p_ + n);
        p_ += n;
        return out;
    }
    // Copies up to n bytes to out and zero-fills the rest.
    void fill(uint8_t* out, size_t n) {
        size_t k = std::min(n, remaining());
        if (k) std::memcpy(out, p_, k);
        if (n > k) std::memset(out + k, 0, n - k);
        p_ += k;
    }

private:
    const uint8_t* p_;
    const uint8_t* end_;
};

// The writer side of Input, for make_seeds.cpp.
class Output {
public:
    template <typename T>
    Output& put(T v) {
        for (size_t i = 0; i < sizeof(T); ++i) buf.push_back(static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i)));
        return *this;
    }
    Output& raw(const void* p, size_t n) {
        auto* b = static_cast<const uint8_t*>(p);
        buf.insert(buf.end(), b, b + n);
        return *this;
    }
    std::vector<uint8_t> buf;
};

}  // namespace pccl_fuzz
