// Deadlines everywhere: invariant 4 says no wait is unbounded, so every blocking helper takes one.
#pragma once
#include <chrono>
#include <cstdio>
#include <string>

namespace pccl {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

inline TimePoint deadline_after(double seconds) {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

inline int millis_until(TimePoint deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left < 0) return 0;
    if (left > 1000000) return 1000000;
    return static_cast<int>(left);
}

inline double seconds_since(TimePoint t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// "2.5 s": how durations appear in error messages.
inline std::string fmt_seconds(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", s);
    return buf;
}

}  // namespace pccl
