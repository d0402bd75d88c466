#include "common/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unistd.h>

namespace pccl {
namespace {

LogLevel initial_level() {
    const char* env = std::getenv("PCCL_LOG_LEVEL");
    if (env == nullptr) return LogLevel::kWarn;
    if (!std::strcmp(env, "debug")) return LogLevel::kDebug;
    if (!std::strcmp(env, "info")) return LogLevel::kInfo;
    if (!std::strcmp(env, "error")) return LogLevel::kError;
    if (!std::strcmp(env, "off")) return LogLevel::kOff;
    return LogLevel::kWarn;
}

std::atomic<int> g_level{static_cast<int>(initial_level())};
std::mutex g_mutex;

}  // namespace

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

void log_message(LogLevel level, const char* component, const char* fmt, ...) {
    static const char* names[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    char body[1024];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(body, sizeof body, fmt, args);
    va_end(args);
    auto now = std::chrono::system_clock::now().time_since_epoch();
    double secs = std::chrono::duration<double>(now).count();
    std::lock_guard<std::mutex> lock(g_mutex);
    std::fprintf(stderr, "[pccl %.3f %s %s pid=%d] %s\n", secs, names[static_cast<int>(level)], component,
                 static_cast<int>(getpid()), body);
    std::fflush(stderr);
}

bool LogBudget::allow(const char* component, const char* what) {
    const long long now = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::steady_clock::now().time_since_epoch()).count();
    if (now != window_) {
        if (suppressed_ > 0)
            log_message(LogLevel::kWarn, component, "%llu more %s in the last %lld s not logged (over %d lines a second)",
                        suppressed_, what, window_ < 0 ? 1LL : now - window_, per_second_);
        window_ = now;
        used_ = 0;
        suppressed_ = 0;
    }
    if (used_ < per_second_) {
        ++used_;
        return true;
    }
    ++suppressed_;
    return false;
}

}  // namespace pccl
