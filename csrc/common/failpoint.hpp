// Failpoints: a test hook that makes a named serving loop throw a non-library exception
// (std::bad_alloc, std::runtime_error) on demand, so that tests can prove each loop survives what it
// cannot otherwise be made to throw from outside: it logs the error and serves on, or fails the op it
// was serving with a clear error. Off by default; armed only from the PCCL_FAILPOINTS environment
// variable, read once when the core is loaded (docs/operations.md, "Failpoints"):
//     PCCL_FAILPOINTS="master_loop=bad_alloc:1,mesh_io=runtime_error:2@5"
// means: the master's loop throws std::bad_alloc at its next message; the mesh I/O thread passes 5
// frames, then throws std::runtime_error at the next 2. A malformed value arms nothing and says why
// in one log line; it never stops the process.
//
// Cost when disarmed: one relaxed atomic load and a not-taken branch per check (the sites run once
// per message or frame, never per byte).
#pragma once
#include <atomic>
#include <string>
#include <vector>

namespace pccl::failpoint {

enum class Site : int {
    kMasterLoop = 0,    // "master_loop": the master's event loop, per message handled
    kControlLoop = 1,   // "control_loop": a peer's control thread, per message from the master
    kMeshIo = 2,        // "mesh_io": a peer's mesh I/O thread, per frame header received
    kMeshListener = 3,  // "mesh_listener": a peer's mesh listener, per complete handshake received
    // "control_epoch": a peer's control thread, per EPOCH message (a membership change) from the master,
    // before it is decoded, so the whole change is lost. Apart from control_loop because the master's
    // heartbeats (4 a second) make a control_loop skip count land on an EPOCH only by chance.
    kControlEpoch = 4,
    // "control_recover": a peer's control thread, per RECOVER message (the master's request, after a member
    // was lost, to freeze in-flight ops and report them), before it is decoded. Apart for the same reason.
    kControlRecover = 5,
    kCount = 6,
};

enum class Kind : int { kBadAlloc = 0, kRuntimeError = 1 };

struct Spec {
    Site site;
    Kind kind;
    int count;  // throws this many times
    int skip;   // after passing this many checks
};

// Parses a PCCL_FAILPOINTS value. Returns false (and says why in *error) for any malformed entry; the
// caller then arms nothing. Pure, for the unit tests.
bool parse(const std::string& text, std::vector<Spec>* out, std::string* error);

const char* site_name(Site site);

struct Slot {
    std::atomic<int> remaining{0};
    std::atomic<int> skip{0};
    std::atomic<int> kind{0};
};
extern Slot g_slots[static_cast<int>(Site::kCount)];

// The slow path: counts the skip down, then throws (and logs that it does, with `what`, e.g. the type of
// the message being handled, when given: a test reads that line to know what the throw hit).
void fire(Site site, const char* what);

inline void check(Site site, const char* what = nullptr) {
    if (__builtin_expect(g_slots[static_cast<int>(site)].remaining.load(std::memory_order_relaxed) > 0, 0)) fire(site, what);
}

}  // namespace pccl::failpoint
