#include "common/failpoint.hpp"

#include <cstdlib>
#include <new>
#include <stdexcept>

#include "common/log.hpp"

namespace pccl::failpoint {
namespace {

constexpr int kMaxCount = 1000000;
const char* const kNames[] = {"master_loop", "control_loop", "mesh_io", "mesh_listener", "control_epoch",
                             "control_recover"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(Site::kCount), "a name for every site");

// A non-negative decimal integer of at most kMaxCount, the whole of `s`.
bool parse_int(const std::string& s, int* out) {
    if (s.empty() || s.size() > 7) return false;
    long v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + (c - '0');
    }
    if (v > kMaxCount) return false;
    *out = static_cast<int>(v);
    return true;
}

bool parse_entry(const std::string& e, Spec* spec, std::string* error) {
    const size_t eq = e.find('='), colon = e.find(':', eq == std::string::npos ? 0 : eq);
    if (eq == std::string::npos || colon == std::string::npos) {
        *error = "entry '" + e + "' is not name=kind:count[@skip]";
        return false;
    }
    const std::string name = e.substr(0, eq), kind = e.substr(eq + 1, colon - eq - 1);
    std::string count = e.substr(colon + 1), skip = "0";
    if (const size_t at = count.find('@'); at != std::string::npos) {
        skip = count.substr(at + 1);
        count = count.substr(0, at);
    }
    int site = -1;
    for (int i = 0; i < static_cast<int>(Site::kCount); ++i)
        if (name == kNames[i]) site = i;
    if (site < 0) {
        *error = "unknown failpoint '" + name + "' (known: master_loop, control_loop, mesh_io, mesh_listener, control_epoch, "
                 "control_recover)";
        return false;
    }
    if (kind == "bad_alloc") spec->kind = Kind::kBadAlloc;
    else if (kind == "runtime_error") spec->kind = Kind::kRuntimeError;
    else {
        *error = "unknown exception kind '" + kind + "' for " + name + " (known: bad_alloc, runtime_error)";
        return false;
    }
    if (!parse_int(count, &spec->count) || spec->count < 1 || !parse_int(skip, &spec->skip)) {
        *error = "entry '" + e + "': count must be 1.." + std::to_string(kMaxCount) + " and skip 0.." + std::to_string(kMaxCount);
        return false;
    }
    spec->site = static_cast<Site>(site);
    return true;
}

// Arms the slots from PCCL_FAILPOINTS when the core is loaded. Logs through log_message directly:
// the log level (another translation unit's static) may not be initialized yet, and an armed
// failpoint must always say so.
struct ArmFromEnvironment {
    ArmFromEnvironment() {
        const char* env = std::getenv("PCCL_FAILPOINTS");
        if (env == nullptr || *env == '\0') return;
        std::vector<Spec> specs;
        std::string error;
        if (!parse(env, &specs, &error)) {
            log_message(LogLevel::kWarn, "failpoint", "PCCL_FAILPOINTS ignored, nothing armed: %s", error.c_str());
            return;
        }
        for (const Spec& s : specs) {
            Slot& slot = g_slots[static_cast<int>(s.site)];
            slot.kind.store(static_cast<int>(s.kind));
            slot.skip.store(s.skip);
            slot.remaining.store(s.count);
            log_message(LogLevel::kWarn, "failpoint", "armed %s: %s %d time(s) after %d pass(es) (a test hook)",
                        kNames[static_cast<int>(s.site)], s.kind == Kind::kBadAlloc ? "bad_alloc" : "runtime_error",
                        s.count, s.skip);
        }
    }
};

}  // namespace

Slot g_slots[static_cast<int>(Site::kCount)];

const char* site_name(Site site) { return kNames[static_cast<int>(site)]; }

bool parse(const std::string& text, std::vector<Spec>* out, std::string* error) {
    out->clear();
    if (text.size() > 1024) {
        *error = "longer than 1024 characters";
        return false;
    }
    size_t start = 0;
    while (start <= text.size()) {
        size_t comma = text.find(',', start);
        if (comma == std::string::npos) comma = text.size();
        Spec spec{};
        if (!parse_entry(text.substr(start, comma - start), &spec, error)) return false;
        for (const Spec& s : *out)
            if (s.site == spec.site) {
                *error = std::string("failpoint '") + kNames[static_cast<int>(spec.site)] + "' named twice";
                return false;
            }
        out->push_back(spec);
        start = comma + 1;
    }
    return true;
}

void fire(Site site, const char* what) {
    Slot& slot = g_slots[static_cast<int>(site)];
    if (slot.skip.load() > 0 && slot.skip.fetch_sub(1) > 0) return;
    if (slot.remaining.fetch_sub(1) <= 0) return;  // another thread took the last one
    const bool bad_alloc = slot.kind.load() == static_cast<int>(Kind::kBadAlloc);
    log_message(LogLevel::kWarn, "failpoint", "%s: throwing %s%s%s", kNames[static_cast<int>(site)],
                bad_alloc ? "std::bad_alloc" : "std::runtime_error", what ? " on " : "", what ? what : "");
    if (bad_alloc) throw std::bad_alloc();
    throw std::runtime_error(std::string("failpoint ") + kNames[static_cast<int>(site)]);
}

namespace {
// After g_slots (same translation unit: initialized in order of definition).
const ArmFromEnvironment g_arm;
}  // namespace

}  // namespace pccl::failpoint
