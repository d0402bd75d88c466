// Error codes shared by every layer. Explicit codes (in the style of libuv) let the bindings map each
// failure to a distinct Python exception without parsing messages.
#pragma once
#include <stdexcept>
#include <string>

namespace pccl {

enum class ErrorCode : int {
    kInvalidArgument = 1,  // caller's fault; nothing was sent
    kPeerLost = 2,         // a member died or left mid-op; the op was aborted on every survivor
    kTimeout = 3,          // a deadline passed
    kMasterLost = 4,       // the master connection is gone
    kEvicted = 5,          // the master removed this peer (frozen, silent, or protocol violation)
    kMismatch = 6,         // peers called the same collective with different arguments
    kClosed = 7,           // the communicator was closed
    kProtocol = 8,         // bytes from the network failed validation
    kIo = 9,               // an operating-system call failed
    kAuth = 10,            // the other end refused this one's credentials (job secret, mesh pair key), or vice versa
};

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ErrorCode code() const { return code_; }

private:
    ErrorCode code_;
};

// Raised while decoding network input; always caught at the connection boundary and turned into
// "close this connection with a logged reason".
class ProtocolError : public Error {
public:
    explicit ProtocolError(const std::string& message) : Error(ErrorCode::kProtocol, message) {}
};

}  // namespace pccl
