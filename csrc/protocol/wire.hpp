// Little-endian byte writer and a bounds-checked reader. Every read from network bytes goes through
// Reader, which throws ProtocolError instead of reading past the end.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace pccl {

class Writer {
public:
    template <typename T>
    void put(T value) {
        static_assert(std::is_integral_v<T>);
        for (size_t i = 0; i < sizeof(T); ++i) buf_.push_back(static_cast<uint8_t>(static_cast<uint64_t>(value) >> (8 * i)));
    }
    void put_bytes(const uint8_t* p, size_t n) { buf_.insert(buf_.end(), p, p + n); }
    void put_string(const std::string& s) {
        put<uint16_t>(static_cast<uint16_t>(s.size()));
        buf_.insert(buf_.end(), s.begin(), s.end());
    }
    std::vector<uint8_t>& bytes() { return buf_; }

private:
    std::vector<uint8_t> buf_;
};

class Reader {
public:
    Reader(const uint8_t* data, size_t len) : p_(data), end_(data + len) {}
    template <typename T>
    T get() {
        static_assert(std::is_integral_v<T>);
        need(sizeof(T));
        uint64_t v = 0;
        for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(p_[i]) << (8 * i);
        p_ += sizeof(T);
        return static_cast<T>(v);
    }
    // Reads an enum-like byte and rejects values outside [0, limit).
    uint8_t get_enum(uint8_t limit, const char* what) {
        uint8_t v = get<uint8_t>();
        if (v >= limit) throw ProtocolError(std::string("invalid ") + what + " value " + std::to_string(v));
        return v;
    }
    std::string get_string(size_t max_len) {
        auto len = get<uint16_t>();
        if (len > max_len) throw ProtocolError("string of " + std::to_string(len) + " bytes exceeds the limit");
        need(len);
        std::string s(reinterpret_cast<const char*>(p_), len);
        p_ += len;
        return s;
    }
    // Copies exactly n raw bytes (a nonce, a MAC).
    void get_bytes(uint8_t* out, size_t n) {
        need(n);
        std::memcpy(out, p_, n);
        p_ += n;
    }
    // The bytes not read yet (what an authenticated message's MAC covers).
    const uint8_t* position() const { return p_; }
    size_t remaining() const { return static_cast<size_t>(end_ - p_); }
    uint32_t get_count(uint32_t max, const char* what) {
        auto n = get<uint32_t>();
        if (n > max) throw ProtocolError(std::string(what) + " count " + std::to_string(n) + " exceeds the limit");
        return n;
    }
    // A count of entries of at least entry_bytes each: also refused when the message is too short to
    // hold them, so a 4-byte claim never makes the caller allocate for 65536 entries (found by
    // fuzz_msg_status: a 13-byte STATUS cost 1.5 MB of zeroed memory before failing as truncated).
    uint32_t get_count(uint32_t max, const char* what, size_t entry_bytes) {
        auto n = get_count(max, what);
        if (static_cast<uint64_t>(n) * entry_bytes > remaining()) throw ProtocolError("message truncated");
        return n;
    }
    void expect_end() const {
        if (p_ != end_) throw ProtocolError("message has " + std::to_string(end_ - p_) + " trailing bytes");
    }

private:
    void need(size_t n) const {
        if (static_cast<size_t>(end_ - p_) < n) throw ProtocolError("message truncated");
    }
    const uint8_t* p_;
    const uint8_t* end_;
};

}  // namespace pccl
