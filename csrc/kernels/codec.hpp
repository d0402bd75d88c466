// Wire quantization: how a run of float32/float64 elements travels. Encoding happens once per hop at
// the sender; every peer that needs the value decodes the same bytes with the same code, so quantized
// results stay bitwise identical across peers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.hpp"

namespace pccl {

enum class Quant : uint8_t { kNone = 0, kFp16 = 1, kBf16 = 2, kQ8 = 3, kQ4 = 4, kCount };

// q8 packs blocks of this many elements as [f32 min][f32 step][one byte per element].
constexpr size_t kQ8Block = 256;
// q4 packs blocks of this many elements as [bf16 min][bf16 step][one 4-bit code per element, two per
// byte, the even element in the low nibble]; docs/quantization.md says why (stress/q4_formats.py).
constexpr size_t kQ4Block = 64;
constexpr size_t kQ4BlockBytes = 4 + kQ4Block / 2;

const char* quant_name(Quant q);
bool quant_supports(Quant q, DType t);

// Bytes on the wire for `elems` elements. Linear in whole q8 (q4) blocks, so a piece that starts on a
// block boundary has a fixed wire offset.
size_t wire_bytes(Quant q, DType t, size_t elems);
void encode(Quant q, DType t, const void* src, size_t elems, uint8_t* wire);
void decode(Quant q, DType t, const uint8_t* wire, size_t elems, void* dst);
// encode(), then values = decode(wire): what a sender that must hold exactly what its receivers
// decode does, in one pass for q8 and q4.
void encode_adopt(Quant q, DType t, void* values, size_t elems, uint8_t* wire);
// out = decode(wire) (op) mine for quantized float32/float64 runs, bit for bit what decode() then
// reduce() give, in one pass over memory.
void decode_reduce(Quant q, DType t, ReduceOp op, const uint8_t* wire, size_t elems, const void* mine, void* out);
// dst = decode(encode(src)), blocks starting at src[0]: bit for bit what a hop that encodes a run
// starting on a block boundary sends and its receivers decode (what error feedback subtracts). dst may
// equal src; no other overlap. kNone copies.
void quantize_roundtrip(Quant q, DType t, const void* src, size_t elems, void* dst);

}  // namespace pccl
