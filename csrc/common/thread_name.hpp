// Names the calling thread, so that top -H, perf and gdb tell the core's threads apart from the
// application's (and from gloo's, when both run in one process: perf's per-thread profile of a
// benchmark is how pccl's CPU per op was compared with gloo's). Linux keeps 15 bytes of a name.
#pragma once

#ifdef __linux__
#include <pthread.h>
#endif

namespace pccl {

inline void name_this_thread(const char* name) {
#ifdef __linux__
    pthread_setname_np(pthread_self(), name);
#else
    (void)name;
#endif
}

}  // namespace pccl
