// The data plane of one membership epoch: K TCP connections to every other member, driven by a single
// epoll thread. Reads land directly in the buffers the handler names (no intermediate copy); writes
// are queued per connection and drained as the socket accepts them, so one op can keep several
// connections busy at once. A mesh never outlives its epoch: membership changes build a new one, so
// bytes of an aborted op can never be mistaken for a later op's. With encryption (transport/tls.hpp)
// every connection carries a TLS session that the same thread drives: handshakes run inside the loop,
// all connections at once, and the plaintext path is the same code as without (one branch per call).
#pragma once
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "protocol/frame.hpp"
#include "transport/page_sender.hpp"
#include "transport/socket.hpp"
#include "transport/tls.hpp"

namespace pccl {

// Notified on the I/O thread when a queued frame has been fully written.
class SendCompletion {
public:
    virtual ~SendCompletion() = default;
    virtual void sent() = 0;
};

// Where the payload of an incoming frame goes. dst == nullptr discards it. keep holds whatever owns
// the memory until the payload has arrived.
struct RecvTarget {
    uint8_t* dst = nullptr;
    std::shared_ptr<void> keep;
    int route = 0;  // free for the handler to tell its kinds of target apart
};

class MeshHandler {
public:
    virtual ~MeshHandler() = default;
    // A validated header arrived from member `from`. Throw ProtocolError to drop the connection.
    virtual RecvTarget on_header(int from, const FrameHeader& h) = 0;
    // The payload named by on_header is complete.
    virtual void on_frame(int from, const FrameHeader& h, RecvTarget& target) = 0;
    // The first connection failure of this mesh (EOF, error, silence, protocol violation).
    virtual void on_failure(int from, const std::string& reason) = 0;
};

// Encryption of a mesh: every connection runs TLS with the pre-shared key of its pair of members
// (mesh_tls_key of their mesh pair key, auth/mesh_auth.hpp); the end that dialed a connection is its
// TLS client.
struct MeshTls {
    std::vector<TlsKey> keys;  // [rank]: for the connections with that member
    std::vector<bool> dialed;  // [rank]: this peer dialed that member's connections
};

class Mesh {
public:
    // conns[rank] holds the connections to that member (empty for this peer's own rank). tls: encrypt
    // every connection (nullptr: plaintext). Throws Error(kIo) when OpenSSL cannot make a session.
    Mesh(uint64_t epoch, std::vector<std::vector<Fd>> conns, std::shared_ptr<MeshHandler> handler, double heartbeat_timeout,
         const MeshTls* tls = nullptr);
    ~Mesh();
    Mesh(const Mesh&) = delete;
    Mesh& operator=(const Mesh&) = delete;

    void start();
    // Queues one frame; data must stay valid until completion->sent() or until shutdown() returns.
    // by_reference: the payload may be lent to the kernel (transport/page_sender.hpp), so it must also
    // stay unmodified until the receiver has acknowledged it, even after sent().
    void send(int rank, int conn_index, const FrameHeader& h, const void* data,
              std::shared_ptr<SendCompletion> completion, bool by_reference = false);
    uint64_t epoch() const { return epoch_; }
    // What this mesh last heard from each member, by rank: the newest byte received on any of its
    // connections, and whether one of them closed or failed (more than silence). A restarted master
    // learns from this how long a missing member has been quiet (Rejoin::heard). Callable from any
    // thread, while the mesh runs or after it stopped.
    struct Heard {
        bool linked = false;  // this peer has connections to that rank (not to itself)
        TimePoint last_rx{};
        bool lost = false;
    };
    std::vector<Heard> heard() const;
    // Stops the I/O thread and closes every connection; afterwards no buffer is touched. Idempotent.
    void shutdown();

private:
    struct SendReq {
        FrameHeader header;
        const uint8_t* data;
        size_t sent = 0;  // bytes of header + payload written so far
        std::shared_ptr<SendCompletion> completion;
        bool lend = false;  // send the payload by page reference (PageSender)
    };
    struct Conn {
        Fd fd;
        uint64_t id = 0;  // epoll cookie: index into conns_
        int rank = -1;
        std::deque<SendReq> queue;  // guarded by Mesh::mutex_
        bool want_write = false;    // I/O thread only
        FrameHeader rx_header{};
        size_t rx_header_got = 0;
        size_t rx_payload_got = 0;
        bool rx_in_payload = false;
        RecvTarget rx_target;
        TimePoint last_rx, last_tx;
        std::atomic<Clock::rep> rx_ticks{0};  // last_rx for other threads (heard())
        std::unique_ptr<PageSender> pages;  // I/O thread only; made on the first payload lent
        bool lend_ok = false;               // PageSender::worth_lending for this peer; fixed at construction
        // Encryption (I/O thread only). rx_more: a read stopped at its budget while OpenSSL may hold
        // more decrypted bytes than the socket shows (epoll would not report them). The waits_ flags:
        // a TLS call asked for the other direction's readiness first.
        std::unique_ptr<TlsSession> tls;
        bool rx_more = false;
        bool read_waits_write = false;
        bool write_waits_read = false;
        // The first record of a frame: its header and the start of its payload, so a small frame is
        // one record and one system call (a record for the header alone would double both).
        std::vector<uint8_t> stage;
        size_t stage_len = 0;
        bool staged = false;
    };

    void loop();
    bool handle_read(Conn& c);
    ssize_t read_some(Conn& c, void* dst, size_t len);
    bool deliver(Conn& c);
    bool handle_write(Conn& c);
    bool handle_write_tls(Conn& c);
    // Advances a connection's TLS handshake; once it is up, reads and writes what waited for it.
    bool step_handshake(Conn& c);
    // link_lost: the connection closed or failed; false when it only went silent (heard() tells the two
    // apart: silence is already in last_rx).
    void fail(Conn& c, const std::string& reason, bool link_lost = true);
    void update_interest(Conn& c, bool want_write);

    uint64_t epoch_;
    std::shared_ptr<MeshHandler> handler_;
    double heartbeat_timeout_;
    std::vector<std::unique_ptr<Conn>> conns_;
    std::vector<std::vector<int>> conn_index_;  // [rank][k] -> index into conns_
    Fd epoll_, wake_;
    std::mutex mutex_;
    std::mutex shutdown_mutex_;  // the op thread and the control thread may both stop a mesh
    std::thread thread_;
    std::atomic<std::thread::id> io_thread_{};
    bool self_queued_ = false;  // the I/O thread queued a send itself: write before waiting again
    bool rx_more_ = false;      // some Conn::rx_more is set: read again before waiting
    std::atomic<bool> stop_{false};
    std::atomic<bool> failed_{false};
    std::atomic<int> lost_rank_{-1};  // the rank whose link closed or failed first, if one did
    bool started_ = false;
    std::vector<uint8_t> discard_;
};

}  // namespace pccl
