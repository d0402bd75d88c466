// Minimal leveled logging to stderr. The master's operators read these lines (joins, leaves,
// evictions, epochs); peers stay quiet unless PCCL_LOG_LEVEL asks for more.
#pragma once
#include <cstdarg>

namespace pccl {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, const char* component, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Caps the lines one noisy event (a connection closed before it authenticated, say) logs per second:
// a flood of thousands of connections a second must not turn into as many log lines, which cost the
// serving thread a write and a flush each. Not thread-safe: one owner thread.
class LogBudget {
public:
    explicit LogBudget(int per_second) : per_second_(per_second) {}
    // True when this line may be logged. Lines over the budget are counted; the first call of a new
    // second logs how many were left out (under `component`, as `what`).
    bool allow(const char* component, const char* what);

private:
    int per_second_;
    long long window_ = -1;  // the current second, of a monotonic clock
    int used_ = 0;
    unsigned long long suppressed_ = 0;
};

}  // namespace pccl

#define PCCL_LOG(level, component, ...)                                        \
    do {                                                                       \
        if (static_cast<int>(level) >= static_cast<int>(::pccl::log_level())) \
            ::pccl::log_message(level, component, __VA_ARGS__);                \
    } while (0)
#define PCCL_DEBUG(c, ...) PCCL_LOG(::pccl::LogLevel::kDebug, c, __VA_ARGS__)
#define PCCL_INFO(c, ...) PCCL_LOG(::pccl::LogLevel::kInfo, c, __VA_ARGS__)
#define PCCL_WARN(c, ...) PCCL_LOG(::pccl::LogLevel::kWarn, c, __VA_ARGS__)
