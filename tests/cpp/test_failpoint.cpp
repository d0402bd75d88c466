// PCCL_FAILPOINTS parsing (csrc/common/failpoint.hpp): what arms, what is refused and why, and that an
// armed check throws the named exception the named number of times after the skipped passes.
#include <gtest/gtest.h>

#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/failpoint.hpp"

namespace pccl::failpoint {
namespace {

TEST(Failpoint, ParsesEntries) {
    std::vector<Spec> specs;
    std::string error;
    ASSERT_TRUE(parse("master_loop=bad_alloc:1,mesh_io=runtime_error:3@7", &specs, &error)) << error;
    ASSERT_EQ(specs.size(), 2u);
    EXPECT_EQ(specs[0].site, Site::kMasterLoop);
    EXPECT_EQ(specs[0].kind, Kind::kBadAlloc);
    EXPECT_EQ(specs[0].count, 1);
    EXPECT_EQ(specs[0].skip, 0);
    EXPECT_EQ(specs[1].site, Site::kMeshIo);
    EXPECT_EQ(specs[1].kind, Kind::kRuntimeError);
    EXPECT_EQ(specs[1].count, 3);
    EXPECT_EQ(specs[1].skip, 7);
    ASSERT_TRUE(parse("control_epoch=runtime_error:1@2", &specs, &error)) << error;
    ASSERT_EQ(specs.size(), 1u);
    EXPECT_EQ(specs[0].site, Site::kControlEpoch);
    EXPECT_STREQ(site_name(Site::kControlEpoch), "control_epoch");
    ASSERT_TRUE(parse("control_recover=bad_alloc:1", &specs, &error)) << error;
    ASSERT_EQ(specs.size(), 1u);
    EXPECT_EQ(specs[0].site, Site::kControlRecover);
    EXPECT_STREQ(site_name(Site::kControlRecover), "control_recover");
}

TEST(Failpoint, RefusesMalformedValues) {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"", "is not name=kind:count"},
        {"master_loop", "is not name=kind:count"},
        {"master_loop=bad_alloc", "is not name=kind:count"},
        {"nowhere=bad_alloc:1", "unknown failpoint"},
        {"mesh_io=segfault:1", "unknown exception kind"},
        {"mesh_io=bad_alloc:0", "count must be"},
        {"mesh_io=bad_alloc:-1", "count must be"},
        {"mesh_io=bad_alloc:99999999999", "count must be"},
        {"mesh_io=bad_alloc:1@", "count must be"},
        {"mesh_io=bad_alloc:1,", "is not name=kind:count"},
        {"mesh_io=bad_alloc:1,mesh_io=runtime_error:1", "named twice"},
        {std::string(2000, 'x'), "longer than"},
    };
    for (const auto& [text, why] : bad) {
        std::vector<Spec> specs;
        std::string error;
        EXPECT_FALSE(parse(text, &specs, &error)) << text;
        EXPECT_NE(error.find(why), std::string::npos) << text << ": " << error;
    }
}

TEST(Failpoint, ThrowsCountTimesAfterSkip) {
    // The unit tests run without PCCL_FAILPOINTS: this site starts disarmed.
    Slot& slot = g_slots[static_cast<int>(Site::kMeshListener)];
    ASSERT_EQ(slot.remaining.load(), 0);
    EXPECT_NO_THROW(check(Site::kMeshListener));
    slot.kind.store(static_cast<int>(Kind::kRuntimeError));
    slot.skip.store(2);
    slot.remaining.store(2);
    EXPECT_NO_THROW(check(Site::kMeshListener));
    EXPECT_NO_THROW(check(Site::kMeshListener));
    EXPECT_THROW(check(Site::kMeshListener), std::runtime_error);
    slot.kind.store(static_cast<int>(Kind::kBadAlloc));
    EXPECT_THROW(check(Site::kMeshListener), std::bad_alloc);
    for (int i = 0; i < 5; ++i) EXPECT_NO_THROW(check(Site::kMeshListener));
    EXPECT_LE(slot.remaining.load(), 0);
}

}  // namespace
}  // namespace pccl::failpoint
