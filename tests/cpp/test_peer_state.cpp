// The communicator's state machines that are pure logic (peer/turns.hpp, peer/master_presence.hpp,
// peer/pending_agreement.hpp): ops on one key run in ticket order and one at a time, a closed queue
// ends every wait without handing out the turn, a vote in flight is kept for a restarted master until
// it is answered or ended, every wait ends at its deadline or at close(), and the agreed pending flag
// is answered once. Threads are real; waits that must block are checked to still block after a
// pause, and every wait the test starts is bounded by a deadline or ended by the test.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "common/clock.hpp"
#include "peer/master_presence.hpp"
#include "peer/pending_agreement.hpp"
#include "peer/turns.hpp"

namespace pccl {
namespace {

using namespace std::chrono_literals;

// Long enough for a thread that was going to finish to have finished on a loaded 2-core machine.
constexpr auto kSettle = 50ms;
// Bounds every future the tests wait for: a hang fails the test instead of stalling ctest.
constexpr auto kBound = 5s;

// ---------------------------------------------------------------------------------------------
// TurnQueue

TEST(TurnQueue, TicketsCountUpPerKey) {
    TurnQueue q;
    EXPECT_EQ(q.reserve({1, 0}), 0u);
    EXPECT_EQ(q.reserve({1, 0}), 1u);
    EXPECT_EQ(q.reserve({2, 0}), 0u);  // another tag has its own order
    EXPECT_EQ(q.reserve({1, 7}), 0u);  // and so has another lane of the same tag
    EXPECT_EQ(q.busy_keys(), 3u);
}

TEST(TurnQueue, FirstTicketRunsAtOnce) {
    TurnQueue q;
    const uint64_t t = q.reserve({1, 0});
    EXPECT_TRUE(q.wait({1, 0}, t));
}

TEST(TurnQueue, OpsRunInTicketOrderWhateverOrderTheyWait) {
    TurnQueue q;
    const TurnQueue::Key key{4, 0};
    constexpr int kOps = 6;
    std::vector<uint64_t> tickets;
    for (int i = 0; i < kOps; ++i) tickets.push_back(q.reserve(key));
    std::mutex m;
    std::vector<uint64_t> ran;
    std::atomic<int> inside{0};
    std::atomic<bool> overlapped{false};
    std::vector<std::thread> threads;
    // Started in reverse: the last ticket waits first.
    for (int i = kOps - 1; i >= 0; --i) {
        threads.emplace_back([&, i] {
            EXPECT_TRUE(q.wait(key, tickets[static_cast<size_t>(i)]));
            if (inside.fetch_add(1) != 0) overlapped = true;
            {
                std::lock_guard<std::mutex> lock(m);
                ran.push_back(tickets[static_cast<size_t>(i)]);
            }
            std::this_thread::sleep_for(2ms);
            inside.fetch_sub(1);
            q.release(key);
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_FALSE(overlapped) << "two ops of one key held the turn at once";
    std::vector<uint64_t> expected;
    for (int i = 0; i < kOps; ++i) expected.push_back(static_cast<uint64_t>(i));
    EXPECT_EQ(ran, expected);
    EXPECT_EQ(q.busy_keys(), 0u) << "a key whose tickets were all released must be forgotten";
}

TEST(TurnQueue, LaterTicketWaitsForRelease) {
    TurnQueue q;
    const TurnQueue::Key key{1, 3};
    const uint64_t first = q.reserve(key), second = q.reserve(key);
    ASSERT_TRUE(q.wait(key, first));
    auto waiter = std::async(std::launch::async, [&] { return q.wait(key, second); });
    EXPECT_EQ(waiter.wait_for(kSettle), std::future_status::timeout) << "the second op ran before the first released its turn";
    q.release(key);
    ASSERT_EQ(waiter.wait_for(kBound), std::future_status::ready);
    EXPECT_TRUE(waiter.get());
}

TEST(TurnQueue, ReleaseOfOneKeyDoesNotServeAnother) {
    TurnQueue q;
    const TurnQueue::Key a{1, 0}, b{2, 0};
    ASSERT_TRUE(q.wait(a, q.reserve(a)));
    ASSERT_TRUE(q.wait(b, q.reserve(b)));
    const uint64_t b2 = q.reserve(b);
    auto waiter = std::async(std::launch::async, [&] { return q.wait(b, b2); });
    q.release(a);
    EXPECT_EQ(waiter.wait_for(kSettle), std::future_status::timeout);
    q.release(b);
    ASSERT_EQ(waiter.wait_for(kBound), std::future_status::ready);
    EXPECT_TRUE(waiter.get());
}

TEST(TurnQueue, CloseWakesEveryWaiterWithoutTheTurn) {
    TurnQueue q;
    const TurnQueue::Key key{9, 0};
    ASSERT_TRUE(q.wait(key, q.reserve(key)));  // held by an op that never releases (it is stuck)
    std::vector<std::future<bool>> waiters;
    for (int i = 0; i < 3; ++i) {
        const uint64_t t = q.reserve(key);
        waiters.push_back(std::async(std::launch::async, [&q, key, t] { return q.wait(key, t); }));
    }
    for (auto& w : waiters) EXPECT_EQ(w.wait_for(kSettle), std::future_status::timeout);
    q.close();
    EXPECT_TRUE(q.closed());
    std::vector<bool> woken;
    for (auto& w : waiters) woken.push_back(w.wait_for(kBound) == std::future_status::ready);
    // Should close() not have woken them, serve every ticket so the threads end and the test fails
    // rather than hangs (a std::async future blocks in its destructor).
    for (size_t i = 0; i < waiters.size(); ++i) q.release(key);  // serves each waiter's ticket in turn
    for (size_t i = 0; i < waiters.size(); ++i) {
        EXPECT_TRUE(woken[i]) << "close() left turn waiter " << i << " blocked";
        EXPECT_FALSE(waiters[i].get()) << "a closed queue handed out the turn to waiter " << i;
    }
}

TEST(TurnQueue, WaitAfterCloseReturnsAtOnce) {
    TurnQueue q;
    const TurnQueue::Key key{1, 0};
    const uint64_t t = q.reserve(key);
    q.close();
    EXPECT_FALSE(q.wait(key, t)) << "a closed queue must not hand out turns";
    q.release(key);  // the op that held a turn before close() still releases it: harmless
}

TEST(TurnQueue, IdleKeyStartsAgainAndAStrayReleaseIsIgnored) {
    TurnQueue q;
    const TurnQueue::Key key{5, 11};
    for (int round = 0; round < 3; ++round) {
        const uint64_t t = q.reserve(key);
        EXPECT_EQ(t, 0u) << "round " << round;
        EXPECT_TRUE(q.wait(key, t));
        q.release(key);
        EXPECT_EQ(q.busy_keys(), 0u);
    }
    q.release(key);  // no ticket outstanding: must not advance the next op's turn
    const uint64_t t = q.reserve(key);
    EXPECT_TRUE(q.wait(key, t));
}

// ---------------------------------------------------------------------------------------------
// MasterPresence

TEST(MasterPresence, PresentByDefault) {
    MasterPresence p;
    EXPECT_FALSE(p.is_away());
    const auto start = Clock::now();
    EXPECT_TRUE(p.wait_present(deadline_after(5.0)));
    EXPECT_LT(seconds_since(start), 1.0);
}

TEST(MasterPresence, WaitWhileAwayEndsAtDeadline) {
    MasterPresence p;
    p.away();
    const auto start = Clock::now();
    EXPECT_FALSE(p.wait_present(deadline_after(0.1)));
    const double waited = seconds_since(start);
    EXPECT_GE(waited, 0.09);
    EXPECT_LT(waited, 3.0);
}

TEST(MasterPresence, BackWakesTheWaiter) {
    MasterPresence p;
    p.away();
    auto waiter = std::async(std::launch::async, [&] { return p.wait_present(deadline_after(30.0)); });
    EXPECT_EQ(waiter.wait_for(kSettle), std::future_status::timeout);
    EXPECT_FALSE(p.back().has_value()) << "no vote was in flight";
    ASSERT_EQ(waiter.wait_for(kBound), std::future_status::ready);
    EXPECT_TRUE(waiter.get());
    EXPECT_FALSE(p.is_away());
}

TEST(MasterPresence, CloseWakesEveryWait) {
    MasterPresence p;
    p.away();
    p.start_vote(Vote{3, 1000});
    auto present = std::async(std::launch::async, [&] { return p.wait_present(deadline_after(30.0)); });
    auto answer = std::async(std::launch::async, [&] { return p.wait_vote_result(deadline_after(30.0)); });
    EXPECT_EQ(present.wait_for(kSettle), std::future_status::timeout);
    EXPECT_EQ(answer.wait_for(kSettle), std::future_status::timeout);
    p.close();
    // The waits have 30 s deadlines: one that close() did not wake fails here and ends by itself.
    EXPECT_EQ(present.wait_for(kBound), std::future_status::ready) << "close() left the wait for the master blocked";
    EXPECT_EQ(answer.wait_for(kBound), std::future_status::ready) << "close() left the wait for the vote blocked";
    EXPECT_FALSE(present.get());
    EXPECT_FALSE(answer.get().has_value());
    // Closed for good: later waits do not block either.
    EXPECT_FALSE(p.wait_present(deadline_after(30.0)));
    EXPECT_FALSE(p.wait_vote_result(deadline_after(30.0)).has_value());
}

TEST(MasterPresence, VoteInFlightIsSentAgainToARestartedMaster) {
    MasterPresence p;
    p.start_vote(Vote{7, 2500});
    p.away();
    auto vote = p.back();
    ASSERT_TRUE(vote.has_value());
    EXPECT_EQ(vote->epoch, 7u);
    EXPECT_EQ(vote->timeout_ms, 2500u);
    // Still unanswered: a second restart gets it again.
    p.away();
    EXPECT_TRUE(p.back().has_value());
}

TEST(MasterPresence, AnsweredOrEndedVoteIsNotSentAgain) {
    MasterPresence p;
    p.start_vote(Vote{7, 2500});
    p.vote_answered(VoteResult{0, 1, 0, ""});
    p.away();
    EXPECT_FALSE(p.back().has_value()) << "an answered vote must not be sent to a restarted master";

    p.start_vote(Vote{8, 2500});
    p.end_vote();  // the caller gave up (its deadline passed)
    p.away();
    EXPECT_FALSE(p.back().has_value()) << "an ended vote must not be sent to a restarted master";
}

TEST(MasterPresence, AnswerWakesTheVoterWithTheResult) {
    MasterPresence p;
    p.start_vote(Vote{2, 1000});
    auto answer = std::async(std::launch::async, [&] { return p.wait_vote_result(deadline_after(30.0)); });
    EXPECT_EQ(answer.wait_for(kSettle), std::future_status::timeout);
    p.vote_answered(VoteResult{0, 2, 1, ""});
    ASSERT_EQ(answer.wait_for(kBound), std::future_status::ready);
    auto r = answer.get();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->admitted, 2u);
    EXPECT_EQ(r->pending, 1u);
}

TEST(MasterPresence, NewVoteForgetsTheLastAnswerAndItsWaitEndsAtDeadline) {
    MasterPresence p;
    p.start_vote(Vote{2, 1000});
    p.vote_answered(VoteResult{1, 0, 0, "timed out"});
    p.start_vote(Vote{3, 1000});
    const auto start = Clock::now();
    EXPECT_FALSE(p.wait_vote_result(deadline_after(0.1)).has_value()) << "the earlier vote's answer answered the new one";
    EXPECT_GE(seconds_since(start), 0.09);
}

// ---------------------------------------------------------------------------------------------
// PendingAgreement

TEST(PendingAgreement, NothingAgreedAnswersTheLiveCount) {
    PendingAgreement a;
    EXPECT_FALSE(a.answer(false, 0));
    EXPECT_TRUE(a.answer(false, 2));
}

TEST(PendingAgreement, AgreedFlagIsAnsweredOnceThenTheLiveCount) {
    PendingAgreement a;
    a.adopt(true);
    EXPECT_TRUE(a.answer(false, 0)) << "the agreed flag wins over the live count once";
    EXPECT_FALSE(a.answer(false, 0)) << "asked again with no outcome in between: the live count";
    a.adopt(false);
    EXPECT_FALSE(a.answer(false, 5));
    EXPECT_TRUE(a.answer(false, 5));
}

TEST(PendingAgreement, AloneAnswersTheLiveCountAndKeepsTheFlag) {
    PendingAgreement a;
    a.adopt(false);
    EXPECT_TRUE(a.answer(true, 1)) << "alone, nobody can disagree: the live count";
    // Not consumed by the lone answer: once there are others, the agreed flag is still answered.
    EXPECT_FALSE(a.answer(false, 1));
}

}  // namespace
}  // namespace pccl
