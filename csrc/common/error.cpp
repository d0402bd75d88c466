#include "common/error.hpp"

namespace pccl {

const char* error_code_name(ErrorCode code) {
    switch (code) {
        case ErrorCode::kInvalidArgument: return "invalid argument";
        case ErrorCode::kPeerLost: return "peer lost";
        case ErrorCode::kTimeout: return "timeout";
        case ErrorCode::kMasterLost: return "master lost";
        case ErrorCode::kEvicted: return "evicted";
        case ErrorCode::kMismatch: return "collective mismatch";
        case ErrorCode::kClosed: return "closed";
        case ErrorCode::kProtocol: return "protocol violation";
        case ErrorCode::kIo: return "i/o error";
    }
    return "unknown";
}

}  // namespace pccl
