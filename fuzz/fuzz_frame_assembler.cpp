// The control plane's frame assembler (FrameAssembler in protocol/messages.hpp) under libFuzzer: the
// first decoder every byte from a master or peer connection meets. The input is cut into the reads a
// non-blocking socket could return (the fuzzer picks the cut points), and after every read the frames
// are drained the way the master and the peer drain them. Checked beyond "no crash, no sanitizer
// report": only ProtocolError escapes, and the frames returned, each with its length prefix put back,
// are exactly the stream's bytes in order (none lost, repeated or reordered across cut points).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz/input.hpp"
#include "protocol/messages.hpp"

using namespace pccl;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    pccl_fuzz::Input in(data, size);
    std::vector<uint8_t> stream, rebuilt, body;
    FrameAssembler fa;
    try {
        while (in.remaining() > 0) {
            // A read of 1..4096 bytes (u16, then the bytes); large frames arrive over many reads.
            size_t n = 1 + in.take<uint16_t>() % 4096;
            std::vector<uint8_t> chunk = in.bytes(n);
            // A small input can still name a large frame: repeat the chunk to reach it, as a peer
            // streaming a big STATUS would.
            int repeat = 1 + (chunk.empty() ? 0 : chunk[0] % 4);
            for (int k = 0; k < repeat; ++k) {
                fa.append(chunk.data(), chunk.size());
                stream.insert(stream.end(), chunk.begin(), chunk.end());
                while (fa.next(body)) {
                    uint32_t len = static_cast<uint32_t>(body.size());
                    if (len == 0 || len > kMaxControlMessage) {
                        std::fprintf(stderr, "assembler returned a frame of %u bytes\n", len);
                        std::abort();
                    }
                    for (int i = 0; i < 4; ++i) rebuilt.push_back(static_cast<uint8_t>(len >> (8 * i)));
                    rebuilt.insert(rebuilt.end(), body.begin(), body.end());
                    if (rebuilt.size() > stream.size() || std::memcmp(rebuilt.data(), stream.data(), rebuilt.size()) != 0) {
                        std::fprintf(stderr, "assembler returned bytes that are not the stream's next frame\n");
                        std::abort();
                    }
                }
            }
        }
    } catch (const ProtocolError&) {
        // a bad length: the connection is closed
    }
    return 0;
}
