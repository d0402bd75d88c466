#include "transport/mesh.hpp"

#include <cerrno>
#include <cstring>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/failpoint.hpp"
#include "common/log.hpp"
#include "common/thread_name.hpp"

namespace pccl {
namespace {
constexpr size_t kHeaderBytes = sizeof(FrameHeader);
// Bytes moved per connection and direction before the I/O thread turns to its other connections and
// to the other direction. A ring peer receives from one neighbour while it sends to the other; a long
// burst either way leaves a neighbour waiting (with 8 MiB read bursts and unbounded write bursts the
// three links of a 3-peer ring took turns instead of running together: 0.9x gloo's busbw at 16 MiB,
// 1.05x with 512 KiB).
constexpr size_t kIoBudget = 512u << 10;
// The most plaintext one TLS record carries.
constexpr size_t kTlsRecord = 16384;
// Encrypted records leave in sends of up to this much (TlsSession::coalesce_output): one send per
// 16 KiB record cost a system call and a loopback delivery each.
constexpr size_t kTlsSendBuffer = 256u << 10;
}  // namespace

Mesh::Mesh(uint64_t epoch, std::vector<std::vector<Fd>> conns, std::shared_ptr<MeshHandler> handler,
           double heartbeat_timeout, const MeshTls* tls)
    : epoch_(epoch), handler_(std::move(handler)), heartbeat_timeout_(heartbeat_timeout), conn_index_(conns.size()) {
    epoll_ = Fd(epoll_create1(EPOLL_CLOEXEC));
    wake_ = Fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = UINT64_MAX;
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
    // Whether lending payloads pays depends on how many members share this machine's CPUs.
    std::vector<bool> on_this_host(conns.size(), false);
    int members_here = 1;
    for (size_t r = 0; r < conns.size(); ++r) {
        if (conns[r].empty()) continue;
        on_this_host[r] = peer_on_this_host(conns[r].front().get());
        members_here += on_this_host[r];
    }
    const bool lend_here = PageSender::worth_lending(true, members_here);
    const bool lend_away = PageSender::worth_lending(false, members_here);
    if (members_here > 1 && !lend_here)
        PCCL_DEBUG("mesh", "epoch %llu: %d members on this host: payloads between them are copied, not lent",
                   (unsigned long long)epoch, members_here);
    auto now = Clock::now();
    for (size_t r = 0; r < conns.size(); ++r) {
        const bool lend_ok = on_this_host[r] ? lend_here : lend_away;
        for (auto& fd : conns[r]) {
            auto c = std::make_unique<Conn>();
            c->fd = std::move(fd);
            c->rank = static_cast<int>(r);
            // Encrypted payloads leave from OpenSSL's buffer: there are no caller pages to lend.
            c->lend_ok = lend_ok && tls == nullptr;
            if (tls != nullptr) {
                const bool client = r < tls->dialed.size() && tls->dialed[r];
                c->tls = std::make_unique<TlsSession>(c->fd.get(), client ? TlsSession::Role::kClient : TlsSession::Role::kServer,
                                                      tls->keys.at(r));
                c->tls->coalesce_output(kTlsSendBuffer);
            }
            c->id = conns_.size();
            c->last_rx = c->last_tx = now;
            c->rx_ticks.store(now.time_since_epoch().count(), std::memory_order_relaxed);
            set_nonblocking(c->fd.get(), true);
            // Socket buffers are left to the kernel's autotuning: a fixed size would cap one
            // connection at buffer/RTT on long links.
            epoll_event e{};
            e.events = EPOLLIN;
            e.data.u64 = conns_.size();
            epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->fd.get(), &e);
            conn_index_[r].push_back(static_cast<int>(conns_.size()));
            conns_.push_back(std::move(c));
        }
    }
    discard_.resize(1 << 16);
}

Mesh::~Mesh() { shutdown(); }

void Mesh::start() {
    started_ = true;
    thread_ = std::thread([this] {
        io_thread_.store(std::this_thread::get_id());
        name_this_thread("pccl-mesh");
        // Anything the loop lets escape (an allocation failure, say) ends this epoch's mesh like a
        // broken link: every op on it fails with this reason and the master starts a new epoch. It must
        // not end the process, nor leave the ops waiting for their timeout.
        std::string why;
        try {
            // Clients send their ClientHello now; every handshake then advances with its socket's
            // events. Inside the guard: a handshake step may read a whole frame (and throw).
            for (auto& c : conns_)
                if (c->tls && !failed_ && !step_handshake(*c)) break;
            loop();
        } catch (const std::exception& e) {
            why = std::string("internal error in the mesh I/O thread: ") + e.what();
        } catch (...) {
            why = "unknown internal error in the mesh I/O thread";
        }
        if (!why.empty() && !failed_.exchange(true)) {
            PCCL_LOG(LogLevel::kError, "mesh", "epoch %llu: %s", (unsigned long long)epoch_, why.c_str());
            try {
                handler_->on_failure(-1, why);
            } catch (...) {
            }
        }
    });
}

void Mesh::shutdown() {
    std::lock_guard<std::mutex> once(shutdown_mutex_);
    stop_ = true;
    uint64_t one = 1;
    if (wake_.valid()) (void)!::write(wake_.get(), &one, sizeof one);
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& c : conns_) {
        c->queue.clear();
        c->rx_target = RecvTarget{};
        c->tls.reset();
        c->fd.reset();
    }
}

void Mesh::send(int rank, int conn_index, const FrameHeader& h, const void* data,
                std::shared_ptr<SendCompletion> completion, bool by_reference) {
    auto& idx = conn_index_.at(rank);
    int ci = idx.at(static_cast<size_t>(conn_index) % idx.size());
    bool was_empty;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        was_empty = conns_[ci]->queue.empty();
        // Small payloads are cheaper to copy than to lend.
        bool lend = by_reference && h.length >= PageSender::kMinBytes && conns_[ci]->lend_ok;
        conns_[ci]->queue.push_back(SendReq{h, static_cast<const uint8_t*>(data), 0, std::move(completion), lend});
    }
    // A non-empty queue is already the I/O thread's business (it is writing it, waiting for EPOLLOUT,
    // or about to handle the wake that its first entry sent), and it keeps EPOLLOUT armed until the
    // queue is empty: only the first entry needs a wake. Saves a system call and a thread wake-up per
    // pipelined piece.
    if (!was_empty) return;
    // The I/O thread itself queues forwarded pieces and completion notices while it handles a read;
    // it writes them before it next waits, without a system call to wake itself.
    if (std::this_thread::get_id() == io_thread_.load(std::memory_order_relaxed)) {
        self_queued_ = true;
        return;
    }
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
}

void Mesh::update_interest(Conn& c, bool want_write) {
    if (c.want_write == want_write || !c.fd.valid()) return;
    c.want_write = want_write;
    epoll_event e{};
    e.events = EPOLLIN | (want_write ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    e.data.u64 = c.id;
    epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &e);
}

std::vector<Mesh::Heard> Mesh::heard() const {
    std::vector<Heard> out(conn_index_.size());
    for (size_t r = 0; r < conn_index_.size(); ++r) {
        for (int ci : conn_index_[r]) {
            TimePoint t{Clock::duration(conns_[ci]->rx_ticks.load(std::memory_order_relaxed))};
            if (!out[r].linked || t > out[r].last_rx) out[r].last_rx = t;
            out[r].linked = true;
        }
        out[r].lost = lost_rank_.load(std::memory_order_relaxed) == static_cast<int>(r);
    }
    return out;
}

void Mesh::fail(Conn& c, const std::string& reason, bool link_lost) {
    if (failed_.exchange(true)) return;
    if (link_lost) lost_rank_.store(c.rank, std::memory_order_relaxed);
    PCCL_DEBUG("mesh", "epoch %llu: connection to rank %d failed: %s", (unsigned long long)epoch_, c.rank, reason.c_str());
    handler_->on_failure(c.rank, reason);
}

// Reads what the socket has, up to len bytes. Returns the byte count, 0 when the socket is drained, or
// -1 after failing the mesh (EOF or error).
ssize_t Mesh::read_some(Conn& c, void* dst, size_t len) {
    ssize_t n = c.tls ? c.tls->read(dst, len) : ::recv(c.fd.get(), dst, len, 0);
    if (n > 0) {
        c.last_rx = Clock::now();
        c.rx_ticks.store(c.last_rx.time_since_epoch().count(), std::memory_order_relaxed);
        return n;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (c.tls && c.tls->wants_write()) {
            c.read_waits_write = true;
            update_interest(c, true);
        }
        return 0;
    }
    if (n < 0 && c.tls) fail(c, "TLS: " + c.tls->error());
    else fail(c, n == 0 ? std::string("connection closed by the remote peer") : std::string("recv: ") + std::strerror(errno));
    return -1;
}

bool Mesh::step_handshake(Conn& c) {
    int rc = c.tls->handshake();
    if (rc < 0) {
        fail(c, "TLS handshake failed: " + c.tls->error() +
                    (c.tls->key_mismatch() ? " (the member holds another key for this pair in this epoch)" : ""));
        return false;
    }
    if (rc == 0) {
        update_interest(c, c.tls->wants_write());
        return true;
    }
    update_interest(c, false);
    return handle_read(c) && handle_write(c);
}

// Hands a complete frame to the handler; a violation it detects ends the mesh like any other failure.
bool Mesh::deliver(Conn& c) {
    try {
        handler_->on_frame(c.rank, c.rx_header, c.rx_target);
    } catch (const Error& e) {
        fail(c, std::string("protocol violation: ") + e.what());
        return false;
    } catch (const std::exception& e) {
        fail(c, std::string("internal error handling a frame: ") + e.what());
        return false;
    }
    c.rx_target = RecvTarget{};
    return true;
}

bool Mesh::handle_read(Conn& c) {
    size_t budget = kIoBudget;
    while (budget > 0) {
        if (!c.rx_in_payload) {
            auto* p = reinterpret_cast<uint8_t*>(&c.rx_header) + c.rx_header_got;
            ssize_t n = read_some(c, p, kHeaderBytes - c.rx_header_got);
            if (n <= 0) return n == 0;
            c.rx_header_got += static_cast<size_t>(n);
            budget -= std::min(budget, static_cast<size_t>(n));
            if (c.rx_header_got < kHeaderBytes) continue;
            c.rx_header_got = 0;
            failpoint::check(failpoint::Site::kMeshIo);  // outside the handlers' guards: ends the loop
            try {
                validate_frame_header(c.rx_header, epoch_);
                if (c.rx_header.type == static_cast<uint8_t>(FrameType::kKeepalive)) continue;
                c.rx_target = handler_->on_header(c.rank, c.rx_header);
            } catch (const Error& e) {
                fail(c, std::string("protocol violation: ") + e.what());
                return false;
            } catch (const std::exception& e) {  // no buffer for an early frame, say
                fail(c, std::string("internal error handling a frame header: ") + e.what());
                return false;
            }
            if (c.rx_header.length == 0) {
                if (!deliver(c)) return false;
                continue;
            }
            c.rx_in_payload = true;
            c.rx_payload_got = 0;
        }
        size_t want = c.rx_header.length - c.rx_payload_got;
        uint8_t* dst = c.rx_target.dst ? c.rx_target.dst + c.rx_payload_got : discard_.data();
        if (!c.rx_target.dst) want = std::min(want, discard_.size());
        ssize_t n = read_some(c, dst, want);
        if (n <= 0) return n == 0;
        c.rx_payload_got += static_cast<size_t>(n);
        budget -= std::min(budget, static_cast<size_t>(n));
        if (c.rx_payload_got == c.rx_header.length) {
            c.rx_in_payload = false;
            if (!deliver(c)) return false;
        }
    }
    // Stopped at the budget: OpenSSL may already hold the rest (read ahead), where epoll cannot see it.
    if (c.tls) c.rx_more = rx_more_ = true;
    return true;
}

bool Mesh::handle_write_tls(Conn& c) {
    if (!c.tls->established()) return true;  // step_handshake writes the queue once the session is up
    // Sends the coalesced records; false when the connection failed. Whatever the socket did not take
    // waits for EPOLLOUT, even with the queue empty.
    auto flush = [&](bool more) {
        int rc = c.tls->flush();
        if (rc < 0) {
            fail(c, "TLS: " + c.tls->error());
            return false;
        }
        update_interest(c, more || rc == 0);
        return true;
    };
    if (c.tls->output_pending()) {
        if (!flush(true)) return false;
        if (c.tls->output_pending()) return true;
    }
    for (size_t budget = kIoBudget;;) {
        SendReq* req = nullptr;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!c.queue.empty()) req = &c.queue.front();
        }
        // Flushed without mutex_: a failure calls the handler. A send queued meanwhile wakes the loop.
        if (req == nullptr) return flush(false);
        if (budget == 0) return flush(true);  // more to write: EPOLLOUT brings this connection back
        const size_t total = kHeaderBytes + req->header.length;
        if (!c.staged) {
            const size_t head = std::min<size_t>(req->header.length, kTlsRecord - kHeaderBytes);
            c.stage.resize(kTlsRecord);
            std::memcpy(c.stage.data(), &req->header, kHeaderBytes);
            if (head) std::memcpy(c.stage.data() + kHeaderBytes, req->data, head);
            c.stage_len = kHeaderBytes + head;
            c.staged = true;
        }
        // A write that must be retried is retried with the same bytes: req->sent moves only on success.
        const uint8_t* p;
        size_t len;
        if (req->sent < c.stage_len) {
            p = c.stage.data() + req->sent;
            len = c.stage_len - req->sent;
        } else {
            const size_t off = req->sent - kHeaderBytes;
            p = req->data + off;
            len = req->header.length - off;
        }
        ssize_t n = c.tls->write(p, len);
        if (n < 0) {
            if (errno == EAGAIN) {
                c.write_waits_read = !c.tls->wants_write();
                update_interest(c, c.tls->wants_write() || c.tls->output_pending());
                return true;
            }
            fail(c, "TLS: " + c.tls->error());
            return false;
        }
        c.last_tx = Clock::now();
        req->sent += static_cast<size_t>(n);
        budget -= std::min(budget, static_cast<size_t>(n));
        if (req->sent < total) continue;
        c.staged = false;
        std::shared_ptr<SendCompletion> done;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done = std::move(c.queue.front().completion);
            c.queue.pop_front();
        }
        if (done) done->sent();
    }
}

bool Mesh::handle_write(Conn& c) {
    if (c.tls) return handle_write_tls(c);
    for (size_t budget = kIoBudget;;) {
        SendReq* req;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (c.queue.empty()) {
                update_interest(c, false);
                return true;
            }
            req = &c.queue.front();  // deque front stays valid while others push_back
        }
        if (budget == 0) {  // more to write: EPOLLOUT brings this connection back next round
            update_interest(c, true);
            return true;
        }
        const size_t total = kHeaderBytes + req->header.length;
        const bool lend = req->lend;
        if (lend && req->sent >= kHeaderBytes) {
            if (!c.pages) c.pages = std::make_unique<PageSender>();
            size_t off = req->sent - kHeaderBytes, moved = 0;
            PageSender::Status st = c.pages->send(c.fd.get(), req->data + off, req->header.length - off, &moved);
            req->sent += moved;
            budget -= std::min(budget, moved);
            if (moved) c.last_tx = Clock::now();
            if (st == PageSender::Status::kUnsupported) {
                req->lend = false;  // copy the rest
                continue;
            }
            if (st == PageSender::Status::kWouldBlock) {
                update_interest(c, true);
                return true;
            }
            if (st == PageSender::Status::kFailed) {
                fail(c, std::string("splice: ") + std::strerror(errno));
                return false;
            }
        } else {
            iovec iov[2];
            int iovcnt = 0;
            if (req->sent < kHeaderBytes) {
                iov[iovcnt++] = {reinterpret_cast<uint8_t*>(&req->header) + req->sent, kHeaderBytes - req->sent};
                if (req->header.length && !lend) iov[iovcnt++] = {const_cast<uint8_t*>(req->data), req->header.length};
            } else {
                size_t off = req->sent - kHeaderBytes;
                iov[iovcnt++] = {const_cast<uint8_t*>(req->data) + off, req->header.length - off};
            }
            msghdr msg{};
            msg.msg_iov = iov;
            msg.msg_iovlen = static_cast<size_t>(iovcnt);
            // A lent payload follows the header at once: let TCP put them in one segment.
            ssize_t n = ::sendmsg(c.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT | (lend ? MSG_MORE : 0));
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                    update_interest(c, true);
                    return true;
                }
                fail(c, std::string("send: ") + std::strerror(errno));
                return false;
            }
            c.last_tx = Clock::now();
            req->sent += static_cast<size_t>(n);
            budget -= std::min(budget, static_cast<size_t>(n));
            if (req->sent < total) {
                if (lend && req->sent == kHeaderBytes) continue;  // on to the payload
                update_interest(c, true);
                return true;
            }
        }
        std::shared_ptr<SendCompletion> done;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            done = std::move(c.queue.front().completion);
            c.queue.pop_front();
        }
        if (done) done->sent();
    }
}

void Mesh::loop() {
    const double keepalive_every = heartbeat_timeout_ / 4.0;
    std::vector<epoll_event> events(64);
    while (!stop_ && !failed_) {
        // A send this thread queued after the last write pass must not wait for the next event.
        int n = epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                           self_queued_ || rx_more_ ? 0 : static_cast<int>(keepalive_every * 1000 / 2) + 1);
        if (n < 0 && errno != EINTR) break;
        bool wake = false;
        for (int i = 0; i < n && !failed_; ++i) {
            uint64_t id = events[i].data.u64;
            if (id == UINT64_MAX) {
                uint64_t v;
                (void)!::read(wake_.get(), &v, sizeof v);
                wake = true;
                continue;
            }
            Conn& c = *conns_[id];
            if (c.tls) {
                if (!c.tls->established()) {
                    if (!step_handshake(c)) break;
                    continue;
                }
                if ((events[i].events & EPOLLOUT) && c.read_waits_write) {
                    c.read_waits_write = false;
                    if (!handle_read(c)) break;
                }
            }
            if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                if (!handle_read(c)) break;
            if (c.write_waits_read) {
                c.write_waits_read = false;
                if (!handle_write(c)) break;
            }
            if (events[i].events & EPOLLOUT)
                if (!handle_write(c)) break;
        }
        if (stop_ || failed_) break;
        if (rx_more_) {
            rx_more_ = false;
            for (auto& c : conns_) {
                if (!c->rx_more) continue;
                c->rx_more = false;
                if (!handle_read(*c)) break;
            }
            if (failed_) break;
        }
        if (self_queued_) {
            self_queued_ = false;
            wake = true;
        }
        if (wake) {
            for (auto& c : conns_) {
                bool has;
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    has = !c->queue.empty();
                }
                if (has && !c->want_write && !handle_write(*c)) break;
            }
        }
        // Liveness: a link that delivered nothing for the heartbeat timeout is dead even if TCP
        // has not noticed; idle links carry a keepalive so the other side can tell the difference.
        auto now = Clock::now();
        for (auto& c : conns_) {
            if (failed_) break;
            if (std::chrono::duration<double>(now - c->last_rx).count() > heartbeat_timeout_) {
                fail(*c, "no bytes received for the heartbeat timeout (silent link)", /*link_lost=*/false);
                break;
            }
            if (std::chrono::duration<double>(now - c->last_tx).count() > keepalive_every) {
                bool idle;
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    idle = c->queue.empty();
                    if (idle) {
                        FrameHeader h{};
                        h.magic = kFrameMagic;
                        h.type = static_cast<uint8_t>(FrameType::kKeepalive);
                        h.epoch = epoch_;
                        c->queue.push_back(SendReq{h, nullptr, 0, nullptr});
                    }
                }
                if (idle && !handle_write(*c)) break;
            }
        }
    }
}

}  // namespace pccl
